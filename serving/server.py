"""REST server: TF Serving's REST API for the embedder, plus gallery search.

    python -m serving.server --model-base DIR [--index DIR] [--port 8501] [--host 127.0.0.1]
        [--model-name kdem] [--extra-model NAME=BASE_DIR ...]

Endpoints (TF Serving's, https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/{name}[/versions/{v}]             model status
    GET  /v1/models/{name}[/versions/{v}]/metadata    signature defs
    POST /v1/models/{name}[/versions/{v}]:predict     row ("instances") or columnar ("inputs")

and beyond TF Serving:

    POST /v1/models/{name}:search   {"image": {"b64": ...}, "modality": "infrared", "k": 10} or a list
                                    -> {"results": [[{rank, person_id, camera, path, modality, score}]]}
    GET  /healthz

The highest version under the base path is served; a new version is loaded in the
background (the base path is polled every `--poll-seconds`) and swapped in without a
restart. Embedder requests are decoded one by one (a bad image fails only its own
request), then concurrent requests are micro-batched into one model call.
Extra models (`--extra-model`, e.g. the retrieval SavedModel with ScaNN's ops) are
served with status/metadata/predict, one call per request.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import Dict, Optional

import numpy as np
import orjson
import tensorflow as tf
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from kdem_tf.data import schema
from serving.batching import MicroBatcher, ServedModel, embed_batch
from serving.export import IMAGES_SIGNATURE, SERVING_SIGNATURE
from serving.rest import (ServingError, decode_string, format_predict, invalid, model_status, not_found, parse_json,
                          parse_predict)

log = logging.getLogger("serving")
MAX_K = 1000


def _json(value, status: int = 200) -> Response:
    return Response(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def _version(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    if not text.isdigit():
        raise invalid(f"Malformed request: version {text!r} is not a number")
    return int(text)


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond `limit` bytes (checked while streaming)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ServingError(413, f"request body of {length} bytes: at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServingError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _modalities(values, name: str = "modality") -> list:
    out = []
    for value in values:
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        if text not in schema.MODALITIES:
            raise invalid(f"{name}: must be 'visible' or 'infrared', got {text!r}")
        out.append(text)
    return out


def create_app(model_base: str, model_name: str = "kdem", index_dir: Optional[str] = None,
               extra_models: Optional[Dict[str, str]] = None, poll_seconds: float = 2.0,
               window_ms: float = 5.0, max_batch: int = 32, max_body_bytes: int = 32 << 20,
               max_instances: int = 256) -> FastAPI:
    """Builds the FastAPI app; models and index load at startup.

    Args:
        model_base: the embedder's TF Serving base path.
        model_name: its name in URLs.
        index_dir: gallery index (serving.index) for `:search`; searched with the embedder
            version it was built with.
        extra_models: {name: base path} of other SavedModels (e.g. the retrieval model).
        poll_seconds: how often base paths are checked for a new version.
        window_ms, max_batch: micro-batching window and largest batch (images).
        max_body_bytes, max_instances: request limits.
    """
    models = {model_name: ServedModel(model_name, model_base, embedder=True)}
    for name, base in (extra_models or {}).items():
        models[name] = ServedModel(name, base, embedder=False)
    state = {"index": None, "index_version": None}
    batcher = MicroBatcher(embed_batch, window_ms=window_ms, max_batch=max_batch)

    async def poll():
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(poll_seconds)
            for served in models.values():
                try:
                    await loop.run_in_executor(None, served.refresh)
                except Exception:  # a broken folder must not stop the poller
                    log.exception("model %s: refresh failed", served.name)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if extra_models:
            import scann.scann_ops.py.scann_ops  # noqa: F401  ops of the retrieval model
        for served in models.values():
            served.refresh()
            served.get()  # fail at startup when nothing is servable
        if index_dir:
            from serving.index import load_index
            state["index"] = load_index(index_dir)
            built_with = state["index"].manifest.get("model_version")
            state["index_version"] = models[model_name].pin(built_with) if built_with else None
        batcher.start()
        poller = asyncio.get_running_loop().create_task(poll())
        yield
        poller.cancel()
        await batcher.stop()

    app = FastAPI(title="kdem serving", lifespan=lifespan)

    @app.exception_handler(ServingError)
    async def serving_error(request, error: ServingError):
        return _json({"error": error.message}, error.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return _json({"error": str(error.detail)}, error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error: RequestValidationError):
        return _json({"error": str(error)}, 400)

    @app.exception_handler(Exception)
    async def internal_error(request, error: Exception):
        log.exception("internal error")
        return _json({"error": f"internal error: {type(error).__name__}: {error}"}, 500)

    def served_model(name: str) -> ServedModel:
        if name not in models:
            raise not_found(f"Servable not found for request: Latest({name})")
        return models[name]

    @app.get("/healthz")
    async def healthz():
        index = state["index"]
        return _json({"status": "ok",
                      "models": {n: m.current.version if m.current else None for n, m in models.items()},
                      "index": None if index is None else {"count": len(index),
                                                           "model_version": index.manifest.get("model_version")},
                      "batch_sizes": batcher.batch_sizes[-20:]})

    @app.get("/v1/models/{name}")
    @app.get("/v1/models/{name}/versions/{version}")
    async def status(name: str, version: Optional[str] = None):
        loaded = served_model(name).get(_version(version))
        return _json(model_status(loaded.version))

    @app.get("/v1/models/{name}/metadata")
    @app.get("/v1/models/{name}/versions/{version}/metadata")
    async def metadata(name: str, version: Optional[str] = None):
        loaded = served_model(name).get(_version(version))
        return _json({"model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
                      "metadata": loaded.metadata})

    async def embed(loaded, images_or_bytes, modalities, encoded: bool) -> np.ndarray:
        """Validates + decodes one request's images in a thread, then joins the next batch."""
        modalities = _modalities(modalities)
        if len(modalities) != len(images_or_bytes):
            raise invalid(f"{len(images_or_bytes)} images but {len(modalities)} modalities")
        if encoded:
            def decode_all():
                try:
                    return np.stack([loaded.embedder.decode(b) for b in images_or_bytes])
                except tf.errors.OpError as e:
                    raise invalid(f"image_bytes: not a decodable JPEG/PNG/BMP image: {_short(e)}") from None
            images = await asyncio.get_running_loop().run_in_executor(None, decode_all)
        else:
            images = np.asarray(images_or_bytes, np.float32)
        return await batcher.submit(loaded, (images, modalities), len(images))

    @app.post("/v1/models/{name}:predict")
    @app.post("/v1/models/{name}/versions/{version}:predict")
    async def predict(request: Request, name: str, version: Optional[str] = None):
        body = parse_json(await _read_body(request, max_body_bytes))
        loaded = served_model(name).get(_version(version))
        signature = body.get("signature_name") or SERVING_SIGNATURE
        if not isinstance(signature, str) or signature not in loaded.signatures:
            raise invalid(f"Serving signature name: \"{signature}\" not found in signature def")
        inputs, row_format = parse_predict(body, loaded.input_specs[signature], max_instances)
        if loaded.embedder is not None and signature in (SERVING_SIGNATURE, IMAGES_SIGNATURE):
            encoded = signature == SERVING_SIGNATURE
            images = inputs["image_bytes" if encoded else "images"]
            outputs = {"embedding": await embed(loaded, images, list(inputs["modality"]), encoded)}
        else:
            outputs = await asyncio.get_running_loop().run_in_executor(
                None, _run_signature, loaded.signatures[signature], inputs)
        return _json(format_predict(outputs, row_format))

    @app.post("/v1/models/{name}:search")
    async def search(request: Request, name: str):
        if name != model_name:
            raise not_found(f"Servable not found for request: Latest({name})")
        index = state["index"]
        if index is None:
            raise ServingError(400, "no gallery index loaded (start the server with --index)")
        body = await _read_body(request, max_body_bytes)
        queries = parse_json(body, object_only=False)
        queries = queries if isinstance(queries, list) else [queries]
        if not queries or len(queries) > max_instances:
            raise invalid(f"between 1 and {max_instances} queries per request")
        images, modalities, ks = [], [], []
        for i, query in enumerate(queries):
            if not isinstance(query, dict) or "image" not in query or "modality" not in query:
                raise invalid(f"query {i}: expected {{\"image\": {{\"b64\": ...}}, \"modality\": ..., \"k\": ...}}")
            k = query.get("k", 10)
            if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
                raise invalid(f"query {i}: k must be an integer in 1..{MAX_K}")
            images.append(decode_string(query["image"], "image"))
            modalities.append(query["modality"])
            ks.append(k)
        loaded = state["index_version"] or served_model(name).get()
        embeddings = await embed(loaded, images, modalities, encoded=True)
        indices, scores = await asyncio.get_running_loop().run_in_executor(None, index.search, embeddings, max(ks))
        results = index.results(indices, scores)
        return _json({"model_version": str(loaded.version), "index_size": len(index),
                      "results": [[dict(r, rank=rank + 1) for rank, r in enumerate(row[:k])]
                                  for row, k in zip(results, ks)]})

    return app


def _short(error: tf.errors.OpError) -> str:
    """The cause line of a TF error, without the graph-trace noise."""
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    noise = ("[[", "File ", "Detected at node", "Graph execution error", "<stack traces")
    causes = [line for line in lines if not line.startswith(noise)]
    return causes[-1] if causes else lines[-1] if lines else "error"


def _run_signature(function, inputs: dict) -> dict:
    try:
        outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
        raise invalid(_short(e) if isinstance(e, tf.errors.OpError) else str(e)) from None
    return {name: value.numpy() for name, value in outputs.items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="TF Serving-compatible REST server with gallery search.")
    parser.add_argument("--model-base", required=True, help="embedder base path (numbered versions)")
    parser.add_argument("--model-name", default="kdem")
    parser.add_argument("--index", default=None, help="gallery index folder (serving.index) for :search")
    parser.add_argument("--extra-model", action="append", default=[], metavar="NAME=BASE_DIR",
                        help="another SavedModel base path to serve (e.g. the retrieval model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-body-mb", type=float, default=32.0)
    parser.add_argument("--max-instances", type=int, default=256)
    args = parser.parse_args(argv)
    extra = {}
    for item in args.extra_model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--extra-model expects NAME=BASE_DIR, got {item!r}")
        extra[name] = path
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(args.model_base, args.model_name, args.index, extra, args.poll_seconds,
                     args.batch_window_ms, args.max_batch, int(args.max_body_mb * (1 << 20)), args.max_instances)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
