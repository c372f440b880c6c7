"""`/openapi.json`, `/docs` (Swagger UI) and `/redoc`: only with `--api-docs`, and behind the token check.

Off by default: the schema lists every route and body shape, which helps an attacker more
than an operator of a running service. With `--api-docs` each of the three needs a token
with the `reader` role like every model route (401 / 403 otherwise). The two HTML pages load
`/openapi.json` from the browser without the `Authorization` header, so on a server with
tokens read the schema with a client that sends it, e.g.
`curl -H "Authorization: Bearer $TOKEN" https://HOST:8501/openapi.json`.
"""
from __future__ import annotations

from typing import Callable

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse

OPENAPI_PATH = "/openapi.json"


def add_api_docs_routes(app: FastAPI, principal: Callable[[Request], str]) -> None:
    """The three documentation routes; `principal(request)` raises 401 / 403 without a fitting token."""
    @app.get(OPENAPI_PATH, include_in_schema=False)
    async def openapi(request: Request):
        principal(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request):
        principal(request)
        return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request):
        principal(request)
        return get_redoc_html(openapi_url=OPENAPI_PATH, title=f"{app.title} - ReDoc")
