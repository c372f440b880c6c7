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
