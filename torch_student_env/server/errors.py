"""The one error type of the server's state: an HTTP status and a `detail` for the client."""

from __future__ import annotations


class ServerError(Exception):
    """An error with an HTTP status and a `detail` for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail
