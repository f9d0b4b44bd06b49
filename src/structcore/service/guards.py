"""Who gets in and how much: a bearer token on every API path, and a request body limit enforced while
the body is read (a request announcing or sending more than the limit is refused with 413 without
reading the rest). Both are plain ASGI middleware, so they run before any form parsing."""

from __future__ import annotations

import hmac
import json

from starlette.exceptions import HTTPException

#: Paths anyone may load: liveness, and the page and docs shells (they hold no model data and ask for the token).
PUBLIC_PATHS = ("/healthz", "/", "/docs", "/openapi.json", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/", "/docs-assets/")


async def send_json(send, status: int, body: dict, headers: dict[str, str] | None = None):
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class BearerToken:
    """Requires ``Authorization: Bearer <token>`` (compared in constant time) outside the public paths."""

    def __init__(self, app, token: str):
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization")
        if given is None:
            return await send_json(send, 401, {"error": "this server requires a token: send the header "
                                               "'Authorization: Bearer <token>' (STRUCTCORE_API_TOKEN)"},
                                   {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given, self.expected):
            return await send_json(send, 401, {"error": "wrong token in the Authorization header"},
                                   {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is larger than this server's limit of {limit:,} bytes; "
                         "send smaller or fewer images")


class BodyLimit:
    """Refuses bodies over ``max_bytes``: at once from Content-Length, else as soon as the bytes read pass it."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await send_json(send, 413, {"error": BodyTooLarge(self.max_bytes).detail}, {"Connection": "close"})
        received = 0
        started = False

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:  # raised outside a route (routes turn it into a 413 answer themselves)
            if not started:
                await send_json(send, 413, {"error": e.detail}, {"Connection": "close"})
