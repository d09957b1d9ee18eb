"""Request body limit as pure ASGI middleware: a declared or streamed body over the limit gets a 413.

A ``Content-Length`` over the limit is refused before the body is read; a chunked body is counted as it
arrives and refused as soon as it passes the limit, so an oversize upload never sits in memory or on disk.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse


def too_large_message(limit: int) -> str:
    return f"request body is over the limit of {limit:,} bytes; send a smaller image (or raise --max-upload-bytes)"


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False  # the server itself refuses a malformed Content-Length
            if too_big:
                response = JSONResponse({"detail": too_large_message(self.max_bytes)}, status_code=413)
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:  # raised inside the endpoint, turned into a 413 by FastAPI
                    raise HTTPException(status_code=413, detail=too_large_message(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)
