"""The audit log: one JSON line per predict or search, written off the event loop.

Each line holds the time, the client's token *name* (never the token), its address, the
model name and version, the signature, the number of instances, k and the returned gallery
ids and person ids (search), the latency and the status. No image bytes, no embeddings.

Records go through a bounded in-memory queue to one writer thread, so a slow disk never
blocks the event loop. The log **fails open**: when the file cannot be opened or written
(full disk, permissions) or the queue overflows, the error is logged once and requests
keep being served; records are lost until the file is writable again (the writer retries
at each new record). Failing closed would let a full disk take the whole search service
down, and the audit trail is the secondary record here; deployments that must not serve
an unaudited request should alert on the `audit log` error line and on
`/healthz`'s `audit.lost` count (see docs/serving.md).
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Optional

log = logging.getLogger("serving")
_STOP = object()


class AuditLog:
    """Appends JSON lines to `path` from a background thread.

    Args:
        path: the log file (opened for appending).
        max_pending: records held in memory while the writer catches up; beyond, they are lost.
    """

    def __init__(self, path: str, max_pending: int = 10_000):
        self.path = path
        self.queue: queue.Queue = queue.Queue(max_pending)
        self.written = 0
        self.lost = 0
        self._failing = False
        self._thread = threading.Thread(target=self._write_loop, name="audit", daemon=True)
        self._thread.start()

    def record(self, **fields) -> None:
        """Queues one record (never blocks); `time` is added."""
        fields = dict(time=round(time.time(), 6), **fields)
        try:
            self.queue.put_nowait(fields)
        except queue.Full:
            self._lose(f"audit log {self.path}: writer behind by {self.queue.maxsize} records")

    def _lose(self, message: str) -> None:
        self.lost += 1
        if not self._failing:  # report once per failure episode
            self._failing = True
            log.error("%s; records are being lost (the service keeps serving: the audit log fails open)", message)

    def _write_loop(self) -> None:
        handle = None
        while True:
            item = self.queue.get()
            if item is _STOP:
                break
            try:
                if handle is None:
                    handle = open(self.path, "a", encoding="utf-8")
                handle.write(json.dumps(item, separators=(",", ":")) + "\n")
                handle.flush()
                self.written += 1
                if self._failing:
                    self._failing = False
                    log.warning("audit log %s: writing again after %d lost records", self.path, self.lost)
            except OSError as e:
                self._lose(f"audit log {self.path}: {type(e).__name__}: {e.strerror or e}")
                if handle is not None:
                    try:
                        handle.close()
                    except OSError:
                        pass
                    handle = None
        if handle is not None:
            handle.close()

    def close(self, timeout: float = 5.0) -> None:
        """Writes what is queued and stops the writer."""
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def stats(self) -> dict:
        return {"path": self.path, "written": self.written, "lost": self.lost, "failing": self._failing}


class NoAudit:
    """No --audit-log: records go nowhere."""

    def record(self, **fields) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        pass

    def stats(self) -> Optional[dict]:
        return None
