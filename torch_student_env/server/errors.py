"""The one error type of the server's state (an HTTP status and a `detail` for the client), and
the one check of a request's token."""

from __future__ import annotations

from collections.abc import Container


class ServerError(Exception):
    """An error with an HTTP status and a `detail` for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def token_refusal(token: str | None, tokens: Container[str]) -> str | None:
    """The 401 detail for a request with `token`, or None when the server accepts it. The body guard
    (`guard.GuardBodies`, before a body is read) and the routes' dependency (`deps.get_token`) ask here."""
    if not token:
        return "missing User-Token header"
    if token not in tokens:
        return "unknown User-Token"
    return None
