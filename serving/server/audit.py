"""The audit log: one JSON line per decision, written off the event loop, fails open.

Each line holds the time, the transport, the client's address (the socket's peer, or the
client a trusted proxy names: serving.server.proxies), the token *name* (never the token),
the model, version and signature, the number of instances, k and the returned gallery ids
and person ids (search), the status actually returned and the latency. No image bytes, no
embeddings. Every field is bounded and every line is strict JSON of at most 16 KB
(serving.server.audit_record).

Records are serialised by `record` (bounded) and go through a bounded in-memory queue to
one writer thread, so a slow disk never blocks the event loop. Each line is flushed to the
kernel when written (a crash of the process loses only what is still queued), and synced
to the disk (`fsync`) after every line (`fsync="every"`) or at most every
`fsync_interval_s` seconds (`"interval"`: a power loss loses at most that much).

The file is reopened when it is renamed or deleted (logrotate's default `create` mode: the
writer notices that the path no longer names the file it holds, by inode) and on `reopen()`
(the server calls it on SIGHUP).

The log **fails open**: when the file cannot be opened or written (full disk, permissions)
or the queue overflows, the error is logged once and requests keep being served; records
are lost until the file is writable again (the writer retries at each new record). Failing
closed would let a full disk take the whole search service down, and the audit trail is the
secondary record here; deployments that must not serve an unaudited request should alert on
the `audit log` error line and on `/healthz`'s `audit.lost` count (see docs/serving.md).
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from typing import Optional

from serving.server.audit_record import audit_line
from serving.server.settings import ServingLimits

log = logging.getLogger("serving")
_STOP = object()
FSYNC_MODES = ("every", "interval")
_UNSYNCABLE = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)  # pipes, character devices


class AuditLog:
    """Appends JSON lines to `path` from a background thread.

    Args:
        path: the log file (opened for appending).
        max_pending: records held in memory while the writer catches up; beyond, they are lost.
        fsync: "every" (each line synced before the next is written) or "interval".
        fsync_interval_s: with "interval", the longest time a written line stays unsynced.
    """

    def __init__(self, path: str, max_pending: int = 10_000, fsync: str = ServingLimits.audit_fsync,
                 fsync_interval_s: float = ServingLimits.audit_fsync_seconds):
        if fsync not in FSYNC_MODES:
            raise ValueError(f"audit fsync mode {fsync!r}: one of {', '.join(FSYNC_MODES)}")
        self.path = path
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.queue: queue.Queue = queue.Queue(max_pending)
        self.written = 0
        self.lost = 0
        self.reopened = 0
        self._failing = False
        self._reopen_requested = False
        self._handle = None
        self._identity = None      # (st_dev, st_ino) of the open file
        self._unsynced_since = None
        self._thread = threading.Thread(target=self._write_loop, name="audit", daemon=True)
        self._thread.start()

    def record(self, **fields) -> None:
        """Queues one record (never blocks); `time` is added; every field is bounded here."""
        line = audit_line(dict(time=round(time.time(), 6), **fields))
        try:
            self.queue.put_nowait(line)
        except queue.Full:
            self._lose(f"audit log {self.path}: writer behind by {self.queue.maxsize} records")

    def reopen(self) -> None:
        """Reopen the file before the next line (SIGHUP; safe from a signal handler)."""
        self._reopen_requested = True

    def _lose(self, message: str) -> None:
        self.lost += 1
        if not self._failing:  # report once per failure episode
            self._failing = True
            log.error("%s; records are being lost (the service keeps serving: the audit log fails open)", message)

    # ------------------------------------------------------------------ the writer thread

    def _write_loop(self) -> None:
        while True:
            try:
                line = self.queue.get(timeout=self._time_to_sync())
            except queue.Empty:
                self._guarded(self._sync)
                continue
            if line is _STOP:
                break
            if self._guarded(self._write, line):
                self.written += 1
                if self._failing:
                    self._failing = False
                    log.warning("audit log %s: writing again after %d lost records", self.path, self.lost)
        self._guarded(self._sync)
        self._close_handle()

    def _time_to_sync(self) -> Optional[float]:
        if self._unsynced_since is None:
            return None
        return max(0.0, self._unsynced_since + self.fsync_interval_s - time.monotonic())

    def _guarded(self, step, *args) -> bool:
        """Runs one step of the writer; an OSError loses the record (reported once) and closes the file."""
        try:
            step(*args)
            return True
        except OSError as e:
            self._lose(f"audit log {self.path}: {type(e).__name__}: {e.strerror or e}")
            self._close_handle()
            return False

    def _write(self, line: str) -> None:
        handle = self._open_handle()
        handle.write(line)
        handle.flush()
        if self._unsynced_since is None:
            self._unsynced_since = time.monotonic()
        if self.fsync == "every" or time.monotonic() - self._unsynced_since >= self.fsync_interval_s:
            self._sync()

    def _sync(self) -> None:
        if self._handle is None or self._unsynced_since is None:
            return
        try:
            os.fsync(self._handle.fileno())
        except OSError as e:
            if e.errno not in _UNSYNCABLE:
                raise
        self._unsynced_since = None

    def _open_handle(self):
        """The open file; reopened when asked to, or when `path` no longer names it (renamed, deleted)."""
        if self._handle is not None and (self._reopen_requested or self._path_identity() != self._identity):
            reason = "SIGHUP" if self._reopen_requested else "the file was renamed or deleted"
            self._sync()
            self._close_handle()
            self.reopened += 1
            log.info("audit log %s: reopened (%s)", self.path, reason)
        if self._handle is None:
            self._reopen_requested = False
            self._handle = open(self.path, "a", encoding="utf-8")
            st = os.fstat(self._handle.fileno())
            self._identity = (st.st_dev, st.st_ino)
        return self._handle

    def _path_identity(self):
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def _close_handle(self) -> None:
        handle, self._handle, self._unsynced_since = self._handle, None, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass

    def close(self, timeout: float = 5.0) -> None:
        """Writes and syncs what is queued and stops the writer."""
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    @property
    def has_unsynced_lines(self) -> bool:
        """Whether lines written to the file wait for their fsync."""
        return self._unsynced_since is not None

    def stats(self) -> dict:
        """Counters for /healthz (no file path: health checks are open to anyone)."""
        return {"written": self.written, "lost": self.lost, "failing": self._failing, "reopened": self.reopened,
                "fsync": self.fsync}


class NoAudit:
    """No --audit-log: records go nowhere."""

    def record(self, **fields) -> None:
        pass

    def reopen(self) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        pass

    def stats(self) -> Optional[dict]:
        return None
