"""The server's limits and knobs, defined once (no TensorFlow import: the CLI reads them before loading)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """Server knobs; the one place their defaults are defined (the CLI reads them from here)."""
    poll_seconds: float = 2.0        # how often base paths are checked for a new version
    window_ms: float = 60.0          # micro-batching window (5 ms: half-full batches on a CPU; docs/serving.md)
    max_batch: int = 32              # images per model call
    max_queue: int = 64              # requests waiting for a batch; more get 429 / RESOURCE_EXHAUSTED
    max_body_bytes: int = 32 << 20   # REST request body
    max_instances: int = 256         # images (or rows) per request
    max_k: int = 1000                # search results per query
    audit_fsync: str = "interval"    # "every": fsync each audit line; "interval": at most audit_fsync_seconds late
    audit_fsync_seconds: float = 1.0
    # Per-request resource bounds (docs/serving.md "Limits"); all checked before any large allocation.
    max_image_pixels: int = 4096 * 4096  # decoded pixels per image, read from the PNG/JPEG/BMP header first
    max_queue_images: int = 1024     # images queued or being decoded; beyond, 429 (one request alone always fits)
    worker_threads: int = 2          # the pool that parses JSON bodies and decodes images, off the event loop
    max_json_depth: int = 16         # nesting of a REST body ([[[[...]]]] images need 5)
    max_echo_chars: int = 64         # at most this much of an offending value is echoed in an error message
    # connections and timeouts (serving.server.limits; docs/serving.md "Connections, timeouts, deadlines")
    header_timeout_s: float = 10.0   # a REST request's header block must arrive whole within this
    body_timeout_s: float = 30.0     # most seconds between two chunks of a REST request body
    keep_alive_s: float = 5.0        # idle keep-alive connections (REST) / idle gRPC connections closed after
    max_connections: int = 128       # REST: open connections or requests in flight; beyond, 503 at once
    max_concurrent_rpcs: int = 128   # gRPC: RPCs in flight; beyond, RESOURCE_EXHAUSTED at once
    request_timeout_s: float = 60.0  # a request's deadline on both transports (a gRPC client's own if sooner)
