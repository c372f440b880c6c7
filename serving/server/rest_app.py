"""TF Serving's REST API over a `ServingCore`, plus gallery search (FastAPI).

    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]             model status
    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]/metadata    signature defs
    POST /v1/models/{name}[/versions/{v} | /labels/{l}]:predict     row ("instances") or columnar ("inputs")
    POST /v1/models/{name}:search   {"image": {"b64": ...}, "modality": "infrared", "k": 10} or a list
                                    -> {"results": [[{rank, index, person_id, camera, path, modality, score}]]}
    GET  /healthz   liveness (always 200 while the process serves), with readiness and counters
    GET  /readyz    readiness: 200 when every model has a version loaded, else 503

Every route but the two health checks needs `Authorization: Bearer TOKEN` when the server
has tokens (401 otherwise; 403 for a token without the `reader` role). `/docs`, `/redoc`
and `/openapi.json` exist only with `api_docs` (`--api-docs`), and then need a token too.
A request whose client disconnects is cancelled, so it leaves the batch queue before it is
computed. Each request's audit fields go to `audit_entry(request)`, written by
serving.server.rest_audit.AuditedApp, which wraps this app.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

import orjson
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from kdem_tf.artifacts import SEARCH_SIGNATURE, SERVING_SIGNATURE
from serving.server.auth import READER, PermissionDenied
from serving.server.core import ServingCore
from serving.server.errors import ServingError, invalid
from serving.server.limits import within_deadline
from serving.server.settings import ServingLimits
from serving.server.rest_audit import audit_entry
from serving.server.request_checks import check_k, excerpt, parse_version
from serving.server.rest_errors import InternalErrors
from serving.server.rest import (decode_string, format_predict, model_status, parse_json, parse_predict,
                                 signature_defs_json)

log = logging.getLogger("serving")
CLIENT_CLOSED = 499  # nginx's code for "client closed the request"; nobody reads it
OPENAPI_PATH = "/openapi.json"


def json_response(value, status: int = 200, headers: Optional[dict] = None) -> Response:
    return Response(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json", headers=headers)


SEARCH_FIELDS = ("image", "modality", "k")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond `limit` bytes (checked while streaming)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ServingError("INVALID_ARGUMENT", f"request body of {length} bytes: at most {limit}", 413)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServingError("INVALID_ARGUMENT", f"request body over {limit} bytes", 413)
            chunks.append(chunk)
    except ClientDisconnect:  # gone mid-body, or cut by --body-timeout-s (serving.server.limits)
        raise ServingError("CANCELLED", f"client disconnected after {size} bytes of the body",
                           CLIENT_CLOSED) from None
    return b"".join(chunks)


async def unless_disconnected(request: Request, work):
    """Runs `work` (a coroutine), cancelling it when the client disconnects first (-> None)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.Event()

    async def watch():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone.set()
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if gone.is_set():
            return None
        raise
    finally:
        watcher.cancel()


def create_app(core: ServingCore, auth, audit, api_docs: bool = False) -> FastAPI:
    """The FastAPI app of one server process; `core` is loaded and started by `serving.server`.

    Args:
        core: the shared models, index and batcher.
        auth: serving.server.auth.TokenStore or OpenAccess.
        audit: serving.server.audit.AuditLog or NoAudit (its counters in /healthz).
        api_docs: serve /docs, /redoc and /openapi.json (behind the token check).
    """
    app = FastAPI(title="kdem serving", docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)
    add_health_routes(app, core, audit)
    gate = RequestGate(auth, core.limits.request_timeout_s)
    if api_docs:
        add_api_docs_routes(app, gate.principal)
    add_model_routes(app, core, gate)
    add_search_route(app, core, gate)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as TF Serving's `{"error": message}` with its HTTP status."""
    @app.exception_handler(ServingError)
    async def serving_error(request, error: ServingError):
        audit_entry(request)["status"] = error.code
        if isinstance(error, PermissionDenied):
            audit_entry(request)["token_name"] = error.token_name
        return json_response({"error": error.message}, error.status, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        audit_entry(request)["status"] = None  # named after the HTTP status sent
        return json_response({"error": str(error.detail)}, error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        audit_entry(request)["status"] = "INVALID_ARGUMENT"
        return json_response({"error": str(error)}, 400)
    app.add_middleware(InternalErrors)  # anything else: 500 with a request id, its traceback logged once


class RequestGate:
    """What every model route does around its work: the token check, the request's audit fields."""

    def __init__(self, auth, request_timeout_s: float = ServingLimits.request_timeout_s):
        self.auth = auth
        self.request_timeout_s = request_timeout_s  # each request's deadline (serving.server.limits)

    def principal(self, request: Request, model: Optional[str] = None, role: str = READER) -> str:
        """The token's name (noted for the audit line); 401 / 403 otherwise."""
        entry = audit_entry(request)
        if model is not None:
            entry["model"] = model
        entry["token_name"] = who = self.auth.check(request.headers.get("authorization"), role)
        return who

    async def audited(self, request: Request, name: str, signature: str, work):
        """Runs the request's coroutine `work(entry)`, which adds its fields to the audit entry."""
        entry = audit_entry(request)
        entry.update(model=name, signature=signature)
        response = await unless_disconnected(request, within_deadline(work(entry), self.request_timeout_s))
        if response is None:
            entry["status"] = "CANCELLED"
            return Response(status_code=CLIENT_CLOSED)
        return response


def add_api_docs_routes(app: FastAPI, principal: Callable[[Request], str]) -> None:
    """`/openapi.json`, `/docs`, `/redoc` (only with --api-docs): `principal(request)` raises 401 / 403
    without a fitting token. The HTML pages fetch the schema without the Authorization header: read it
    with a client that sends the token (docs/serving.md)."""
    @app.get(OPENAPI_PATH, include_in_schema=False)
    async def openapi(request: Request):
        principal(request)
        return json_response(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request):
        principal(request)
        return get_swagger_ui_html(openapi_url=OPENAPI_PATH, title=f"{app.title} - docs")

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request):
        principal(request)
        return get_redoc_html(openapi_url=OPENAPI_PATH, title=f"{app.title} - ReDoc")


def add_health_routes(app: FastAPI, core: ServingCore, audit) -> None:
    """/healthz (liveness, with readiness and counters) and /readyz (readiness); no token needed."""
    @app.get("/healthz")
    async def healthz():
        ready, versions = core.readiness()
        index, batcher = core.index, core.batcher
        return json_response({
            "status": "ok", "live": True, "ready": ready, "models": versions,
            "index": None if index is None else {"count": len(index),
                                                 "model_version": index.manifest.get("model_version")},
            "queue": {"waiting": batcher.waiting, "max": batcher.max_queue, "shed": batcher.shed,
                      "dropped": batcher.dropped, "computed": batcher.computed,
                      "waiting_images": batcher.waiting_images, "max_images": batcher.max_queue_images},
            "audit": audit.stats(), "batch_sizes": batcher.batch_sizes[-20:]})

    @app.get("/readyz")
    async def readyz():
        ready, versions = core.readiness()
        return json_response({"ready": ready, "models": versions}, 200 if ready else 503)


def add_model_routes(app: FastAPI, core: ServingCore, gate: RequestGate) -> None:
    """TF Serving's model status, metadata and predict routes (latest, /versions/{v}, /labels/{l})."""
    limits = core.limits

    @app.get("/v1/models/{name}")
    @app.get("/v1/models/{name}/versions/{version}")
    @app.get("/v1/models/{name}/labels/{label}")
    async def status(request: Request, name: str, version: Optional[str] = None, label: Optional[str] = None):
        gate.principal(request, name)
        loaded = core.resolve(name, parse_version(version), label)
        return json_response(model_status(loaded.version))

    @app.get("/v1/models/{name}/metadata")
    @app.get("/v1/models/{name}/versions/{version}/metadata")
    @app.get("/v1/models/{name}/labels/{label}/metadata")
    async def metadata(request: Request, name: str, version: Optional[str] = None, label: Optional[str] = None):
        gate.principal(request, name)
        loaded = core.resolve(name, parse_version(version), label)
        return json_response({"model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
                              "metadata": signature_defs_json(core.signature_defs(loaded))})

    @app.post("/v1/models/{name}:predict")
    @app.post("/v1/models/{name}/versions/{version}:predict")
    @app.post("/v1/models/{name}/labels/{label}:predict")
    async def predict(request: Request, name: str, version: Optional[str] = None, label: Optional[str] = None):
        gate.principal(request, name)
        version_number = parse_version(version)
        body = await core.in_worker(parse_json, await read_body(request, limits.max_body_bytes), True,
                                    limits.max_json_depth)
        signature = body.get("signature_name") or SERVING_SIGNATURE
        audit_entry(request)["signature"] = signature
        if not isinstance(signature, str):
            raise invalid(f"signature_name must be a string, got {excerpt(signature, limits.max_echo_chars)}")

        async def work(entry):
            loaded = core.resolve(name, version_number, label, signature)
            entry["version"] = loaded.version
            inputs, row_format = await core.in_worker(parse_predict, body, core.input_specs(loaded, signature),
                                                      limits.max_instances)
            entry["instances"] = max((len(a) for a in inputs.values() if a.ndim > 0), default=1)
            outputs = await core.predict(loaded, signature, inputs)
            if signature == SEARCH_SIGNATURE:
                entry.update(k=int(inputs["k"]), gallery_ids=outputs["gallery_ids"].tolist(),
                             person_ids=outputs["person_ids"].tolist())
            return json_response(format_predict(outputs, row_format))
        return await gate.audited(request, name, signature, work)


def add_search_route(app: FastAPI, core: ServingCore, gate: RequestGate) -> None:
    """POST /v1/models/{name}:search: query images -> ranked gallery matches."""
    @app.post("/v1/models/{name}:search")
    async def search(request: Request, name: str):
        gate.principal(request, name)
        core.resolve(name, signature=SEARCH_SIGNATURE)  # 404 / FAILED_PRECONDITION first
        limits = core.limits
        queries = await core.in_worker(parse_json, await read_body(request, limits.max_body_bytes), False,
                                       limits.max_json_depth)
        queries = queries if isinstance(queries, list) else [queries]
        if not queries or len(queries) > limits.max_instances:
            raise invalid(f"between 1 and {limits.max_instances} queries per request, got {len(queries)}")
        images, modalities, ks = [], [], []
        for i, query in enumerate(queries):
            unknown = sorted(set(query) - set(SEARCH_FIELDS)) if isinstance(query, dict) else []
            if not isinstance(query, dict) or "image" not in query or "modality" not in query or unknown:
                raise invalid(f"query {i}: expected {{\"image\": {{\"b64\": ...}}, \"modality\": ..., \"k\": ...}}"
                              + (f", got the unknown field {excerpt(unknown[0], limits.max_echo_chars)}"
                                 if unknown else ""))
            ks.append(check_k(query.get("k", 10), limits.max_k, f"query {i}", limits.max_echo_chars))
            modalities.append(query["modality"])
            images.append(query["image"])
        images = await core.in_worker(lambda: [decode_string(image, "image") for image in images])

        async def work(entry):
            entry.update(instances=len(images), k=ks[0] if len(set(map(str, ks))) == 1 else ks)
            loaded, results = await core.search(images, modalities, ks)
            entry.update(version=loaded.version, gallery_ids=[[r["index"] for r in row] for row in results],
                         person_ids=[[r["person_id"] for r in row] for row in results])
            return json_response({"model_version": str(loaded.version), "index_size": len(core.index),
                                  "results": [[dict(r, rank=rank + 1) for rank, r in enumerate(row)]
                                              for row in results]})
        return await gate.audited(request, name, SEARCH_SIGNATURE, work)
