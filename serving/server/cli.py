"""The serving process: TF Serving's REST and gRPC APIs for the embedder, plus gallery search.

    python -m serving.server --model-base DIR [--index DIR] [--host 127.0.0.1]
        [--port 8501] [--grpc-port 8500] [--model-name kdem] [--extra-model NAME=BASE_DIR ...]
        [--auth-tokens FILE] [--tls-cert PEM --tls-key PEM] [--audit-log FILE]
        [--audit-fsync every|interval] [--trusted-proxy CIDR ...] [--api-docs]
        [--max-queue 64] [--version-label LABEL=VERSION ...] [--ready-file FILE]
        [--header-timeout-s 10] [--body-timeout-s 30] [--keep-alive-s 5] [--max-connections 128]
        [--max-concurrent-rpcs 128] [--request-timeout-s 60]            (serving.server.limits)

REST (serving.server.rest_app) and gRPC (serving.server.grpc_service) run in one process, on one event
loop, over one `ServingCore`: the same loaded versions and the same micro-batcher, so
concurrent REST and gRPC requests share batches. `--port 0` / `--grpc-port auto` bind a
free port; `--grpc-port 0` turns gRPC off. Once both listen, the process prints one line
`serving: rest=http://HOST:PORT grpc=HOST:PORT` and, with `--ready-file`, writes
{"rest_port", "grpc_port", "pid"} there atomically (tests and benchmarks read the ports
from it: no free-port races).

The highest version under each base path is served; a new version is loaded in the
background (polled every `--poll-seconds`), warmed up (serving.server.versions) and swapped in
without a restart; a version that fails to load is skipped (tried again once its folder changes)
and the current one keeps serving; deleting the served version rolls back to the next one. An
index that does not fit the served model is refused at start (exit 2). Prometheus metrics at
/monitoring/prometheus/metrics (serving.server.metrics). A search uses the
version its index was built with. On an address outside loopback the server refuses to
start without `--auth-tokens`, unless `--allow-unauthenticated`. SIGHUP reopens the audit log
(it is also reopened by itself when renamed away, as logrotate does).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys

from kdem_tf import cli_help
from kdem_tf.artifacts import atomic_write_text
from serving.server.auth import OpenAccess, TokenFileError, TokenStore, refuse_open_bind
from serving.server.limits import add_connection_flags, connection_settings
from serving.server.rest_audit import TrustedProxies
from serving.server.settings import ServingLimits

log = logging.getLogger("serving")
GRPC_AUTO = "auto"


def _pairs(items, parser, flag: str, value_type=str) -> dict:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            parser.error(f"{flag} expects NAME=VALUE, got {item!r}")
        try:
            out[name] = value_type(value)
        except ValueError:
            parser.error(f"{flag} {item!r}: {value!r} is not a {value_type.__name__}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    limits = ServingLimits()
    parser = cli_help.parser("serving.server", "TF Serving-compatible REST + gRPC server with gallery search.")
    parser.add_argument("--model-base", **cli_help.required("embedder base path (numbered versions)"))
    parser.add_argument("--model-name", default="kdem", help="the name clients ask for (/v1/models/NAME)")
    parser.add_argument("--index", default=None, help="gallery index folder (serving.index) for search")
    parser.add_argument("--extra-model", action="append", default=[], metavar="NAME=BASE_DIR",
                        help="another SavedModel base path to serve (e.g. the retrieval model)")
    parser.add_argument("--version-label", action="append", default=[], metavar="LABEL=VERSION",
                        help="a TF Serving version label of the embedder (e.g. stable=3)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (tokens needed beyond loopback)")
    parser.add_argument("--port", type=int, default=8501, help="REST port (0: a free port)")
    parser.add_argument("--grpc-port", default="8500", help="gRPC port (0: off, 'auto': a free port)")
    parser.add_argument("--auth-tokens", default=None, metavar="FILE",
                        help="'name:token[:role]' lines; re-read on change; fails closed (docs/serving.md)")
    parser.add_argument("--allow-unauthenticated", action="store_true",
                        help="serve without tokens on a non-loopback address")
    parser.add_argument("--tls-cert", default=None, metavar="PEM", help="serve REST and gRPC over TLS (with --tls-key)")
    parser.add_argument("--tls-key", default=None, metavar="PEM", help="the certificate's private key")
    parser.add_argument("--audit-log", default=None, metavar="FILE", help="JSON lines, one per request")
    parser.add_argument("--audit-fsync", choices=("every", "interval"), default=limits.audit_fsync,
                        help="sync the audit log after every line, or at most --audit-fsync-seconds late")
    parser.add_argument("--audit-fsync-seconds", type=float, default=limits.audit_fsync_seconds,
                        help="--audit-fsync interval: the most a line waits for its fsync")
    parser.add_argument("--trusted-proxy", action="append", default=[], metavar="CIDR",
                        help="a proxy network whose X-Forwarded-For names the client (default: none trusted)")
    parser.add_argument("--api-docs", action="store_true", help="serve /docs, /redoc, /openapi.json (token needed)")
    parser.add_argument("--ready-file", default=None, metavar="FILE", help="write the bound ports here (JSON)")
    parser.add_argument("--poll-seconds", type=float, default=limits.poll_seconds,
                        help="how often the model base is checked for new or removed versions")
    parser.add_argument("--batch-window-ms", type=float, default=limits.window_ms,
                        help="how long a batch waits for more images")
    parser.add_argument("--max-batch", type=int, default=limits.max_batch, help="images per model call")
    parser.add_argument("--max-queue", type=int, default=limits.max_queue,
                        help="requests waiting for a batch; beyond, 429 / RESOURCE_EXHAUSTED at once")
    parser.add_argument("--max-body-mb", type=float, default=limits.max_body_bytes / (1 << 20),
                        help="a REST body or gRPC message; beyond, 413 / RESOURCE_EXHAUSTED")
    parser.add_argument("--max-instances", type=int, default=limits.max_instances,
                        help="images (rows, queries) per request; beyond, 400 / INVALID_ARGUMENT")
    parser.add_argument("--max-image-pixels", type=int, default=limits.max_image_pixels,
                        help="decoded pixels per image, read from its header; more: 400")
    parser.add_argument("--max-queue-images", type=int, default=limits.max_queue_images,
                        help="images queued or being decoded; beyond, 429 / RESOURCE_EXHAUSTED at once")
    parser.add_argument("--worker-threads", type=int, default=limits.worker_threads,
                        help="threads that parse JSON bodies and decode images, off the event loop")
    add_connection_flags(parser, limits)
    args = parser.parse_args(argv)
    try:
        args.connection_settings = connection_settings(args)
    except ValueError as e:
        parser.error(str(e))
    args.extra = _pairs(args.extra_model, parser, "--extra-model")
    args.labels = _pairs(args.version_label, parser, "--version-label", int)
    if args.grpc_port != GRPC_AUTO and not args.grpc_port.isdigit():
        parser.error(f"--grpc-port: a port number, 0 (off) or '{GRPC_AUTO}', got {args.grpc_port!r}")
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    try:
        args.proxies = TrustedProxies(args.trusted_proxy)
    except ValueError as e:
        parser.error(str(e))
    return args


async def serve(args: argparse.Namespace, auth) -> None:
    """Loads the models, then serves REST and gRPC until SIGINT/SIGTERM."""
    import uvicorn

    from serving.server.audit import AuditLog, NoAudit
    from serving.server.core import ServingCore
    from serving.server.grpc_service import start_grpc_server
    from serving.server.limits import uvicorn_options
    from serving.server.metrics import instrument
    from serving.server.rest_app import create_app
    from serving.server.rest_audit import AuditedApp

    limits = ServingLimits(poll_seconds=args.poll_seconds, window_ms=args.batch_window_ms, max_batch=args.max_batch,
                           max_queue=args.max_queue, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                           max_instances=args.max_instances, audit_fsync=args.audit_fsync,
                           audit_fsync_seconds=args.audit_fsync_seconds, max_image_pixels=args.max_image_pixels,
                           max_queue_images=args.max_queue_images, worker_threads=args.worker_threads,
                           **args.connection_settings)
    core = ServingCore(args.model_base, args.model_name, args.index, args.extra, args.labels, limits)
    await asyncio.get_running_loop().run_in_executor(None, core.load)
    audit = (AuditLog(args.audit_log, fsync=limits.audit_fsync, fsync_interval_s=limits.audit_fsync_seconds)
             if args.audit_log else NoAudit())
    audit, rest_app = instrument(core, audit, auth,  # Prometheus metrics (serving.server.metrics)
                                 lambda metered: create_app(core, auth, metered, args.api_docs))
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, audit.reopen)
    tls = None
    if args.tls_cert:
        with open(args.tls_cert, "rb") as c, open(args.tls_key, "rb") as k:
            tls = (c.read(), k.read())
    await core.start()
    grpc_server, grpc_port = None, None
    try:
        if args.grpc_port != "0":
            port = 0 if args.grpc_port == GRPC_AUTO else int(args.grpc_port)
            grpc_server, grpc_port = await start_grpc_server(core, auth, audit, args.host, port, tls)
        family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        rest_port = sock.getsockname()[1]
        app = AuditedApp(rest_app, audit, args.proxies)
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                                proxy_headers=False,  # the client address is the socket's: serving.server.rest_audit
                                ssl_certfile=args.tls_cert, ssl_keyfile=args.tls_key, timeout_graceful_shutdown=5,
                                **uvicorn_options(limits))
        server = uvicorn.Server(config)
        rest = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started and not rest.done():
            await asyncio.sleep(0.02)
        if server.started:
            scheme = "https" if tls else "http"
            grpc_text = f"{args.host}:{grpc_port}" if grpc_port else "off"
            print(f"serving: rest={scheme}://{args.host}:{rest_port} grpc={grpc_text}", flush=True)
            if args.ready_file:
                atomic_write_text(args.ready_file, json.dumps({"rest_port": rest_port, "grpc_port": grpc_port,
                                                               "pid": os.getpid()}))
        await rest
    finally:
        if grpc_server is not None:
            await grpc_server.stop(2)
        await core.stop()
        audit.close()


def main(argv=None) -> None:
    args = parse_args(argv)
    refusal = refuse_open_bind(args.host, bool(args.auth_tokens), args.allow_unauthenticated)
    if refusal:
        print(f"serving.server: {refusal}", file=sys.stderr)
        sys.exit(2)
    auth = OpenAccess()
    if args.auth_tokens:
        try:
            auth = TokenStore(args.auth_tokens)
        except TokenFileError as e:
            print(f"serving.server: {e}", file=sys.stderr)
            sys.exit(2)
    # force: the console filter (kdem_tf/console.py) gave the root logger its handler at start-up
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    from serving.server.versions import IndexMismatch  # TensorFlow: imported once the flags are read
    try:
        asyncio.run(serve(args, auth))
    except IndexMismatch as e:  # the index does not fit the served model: refused at start
        print(f"serving.server: {e}", file=sys.stderr)
        sys.exit(2)
