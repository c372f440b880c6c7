"""REST: an internal failure as a 500 with a request id; its traceback logged once, with that id.

A pure ASGI middleware (no BaseHTTPMiddleware: it leaves `receive` untouched, so disconnect
detection keeps working). It sits inside Starlette's ServerErrorMiddleware, so the exception never
reaches uvicorn's own "Exception in ASGI application" log line: one traceback per failure.
Client mistakes are `ServingError`s, answered by the app's handlers before they get here.
"""
from __future__ import annotations

import logging

import orjson
from starlette.responses import Response

from serving.server.errors import new_request_id

log = logging.getLogger("serving")


class InternalErrors:
    """ASGI middleware: an exception escaping the app -> `{"error": "internal error (request id ID)"}`, 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as error:
            if scope["type"] != "http" or started:
                raise
            request_id = new_request_id()
            log.error("internal error, request %s (%s %s)", request_id, scope.get("method"),
                      str(scope.get("path", ""))[:200], exc_info=error)
            body = orjson.dumps({"error": f"internal error (request id {request_id})"})
            await Response(body, 500, media_type="application/json")(scope, receive, send)
