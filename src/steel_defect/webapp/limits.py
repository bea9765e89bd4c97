"""A request-body size limit that holds before anything is parsed or spooled to disk.

A declared ``Content-Length`` over the limit is answered 413 at once; a body sent without
one (chunked) is counted as it arrives and cut off with 413 when it passes the limit.
"""

from __future__ import annotations

import json

from steel_defect.webapp.uploads import megabytes


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: 413 ``{"detail": ...}`` for request bodies over ``max_bytes``."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send) -> None:
        body = json.dumps(
            {
                "detail": f"request body is over the limit of {megabytes(self.max_bytes)}; send fewer "
                "or smaller files per request"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(send)
