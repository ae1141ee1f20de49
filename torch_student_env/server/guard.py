"""`GuardBodies`: the ASGI middleware that checks a request's token and body size before a byte of
its body is read (401, 413), so that strangers and oversized bodies cost no memory."""

from __future__ import annotations

import json

from torch_student_env.server.errors import token_refusal


class _BodyTooLarge(Exception):
    pass


class GuardBodies:
    """ASGI middleware: a request with a body is checked before a byte of it is read.

    The token comes first (401 without reading the body: no memory for strangers), then a
    declared `Content-Length` over the limit (413), then the body is counted while it streams
    in and refused (413) at the first chunk past the limit: a chunked body with no length is
    never buffered whole.
    """

    def __init__(self, app, limit: int, tokens) -> None:
        self.app, self.limit, self.tokens = app, limit, tokens

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        token = headers.get(b"user-token", b"").decode("latin-1")
        refusal = token_refusal(token, self.tokens)
        if refusal is not None:
            await _reply(send, 401, refusal)
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _reply(
                send, 413, f"request body of {length.decode('latin-1')} bytes exceeds the {self.limit}-byte limit"
            )
            return
        received, too_large, replied = 0, False, False

        async def counted_receive():
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    too_large = True
                    raise _BodyTooLarge  # the framework answers an error (FastAPI: 400); replaced below
            return message

        async def guarded_send(message):
            nonlocal replied
            if not too_large:
                await send(message)
            elif not replied:  # whatever the app answers to a body cut short, the client gets the 413
                replied = True
                await _reply(send, 413, f"request body exceeds the {self.limit}-byte limit")

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            if not replied:
                await _reply(send, 413, f"request body exceeds the {self.limit}-byte limit")


async def _reply(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
