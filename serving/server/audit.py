"""The audit log: one JSON line per decision, written off the event loop, fails open.

Each line holds the time, the transport, the client's address (the socket's peer, or the
client a trusted proxy names: serving.server.rest_audit), the token *name* (never the token),
the model, version and signature, the number of instances, k and the returned gallery ids
and person ids (search), the status actually returned and the latency. No image bytes, no
embeddings. Every field is bounded and every line is strict JSON of at most 16 KB
(`audit_line`, below).

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

Bounds of a line. Clients control some fields (a signature name, a path, k, a model name),
so every value is bounded before it is queued:

- a string longer than MAX_STRING_CHARS is cut there and `<field>_length` records its
  original length (in characters);
- a list (or tuple) keeps its first MAX_LIST_ITEMS items at every level and
  `<field>_count` records the original length of the outer one;
- a float that is not finite (NaN, Infinity) is written as the string "NaN", "Infinity" or
  "-Infinity" (JSON has no such numbers); an integer beyond 64 bits as the string
  "<integer of N bits>";
- a dict keeps MAX_LIST_ITEMS keys, each a bounded string; anything nested deeper than
  MAX_DEPTH or of another type becomes its bounded `repr`;
- when the line still exceeds MAX_LINE_BYTES, its largest fields are left out (value
  null) with `<field>_omitted_bytes` recording their encoded size, largest first.

The line is `json.dumps(..., allow_nan=False)`: a strict JSON parser reads every line.
"""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import queue
import threading
import time
from typing import Any, Dict, Optional

from serving.server.settings import ServingLimits

log = logging.getLogger("serving")
_STOP = object()
FSYNC_MODES = ("every", "interval")
_UNSYNCABLE = (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP)  # pipes, character devices
MAX_STRING_CHARS = 256
MAX_LIST_ITEMS = 100
MAX_DEPTH = 3
MAX_LINE_BYTES = 16_000  # under 16 KiB, newline included
INT64_MAX = (1 << 63) - 1
_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def bounded_string(text: str) -> str:
    return text if len(text) <= MAX_STRING_CHARS else text[:MAX_STRING_CHARS]


def bounded_value(value: Any, depth: int = 0) -> Any:
    """`value` as JSON-safe data within the bounds above (no length fields: see bounded_fields)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= INT64_MAX else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else _NONFINITE.get(value, "NaN")
    if isinstance(value, str):
        return bounded_string(value)
    if depth < MAX_DEPTH and isinstance(value, (list, tuple)):
        return [bounded_value(item, depth + 1) for item in value[:MAX_LIST_ITEMS]]
    if depth < MAX_DEPTH and isinstance(value, dict):
        items = list(value.items())[:MAX_LIST_ITEMS]
        return {bounded_string(str(key)): bounded_value(item, depth + 1) for key, item in items}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar
        return bounded_value(value.item(), depth)
    return bounded_string(repr(value))


def bounded_fields(fields: Dict[str, Any]) -> Dict[str, Any]:
    """Every field bounded, with `<field>_length` / `<field>_count` where something was cut."""
    out: Dict[str, Any] = {}
    for key, value in fields.items():
        key = bounded_string(str(key))
        out[key] = bounded_value(value)
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            out[f"{key}_length"] = len(value)
        elif isinstance(value, (list, tuple, dict)) and len(value) > MAX_LIST_ITEMS:
            out[f"{key}_count"] = len(value)
    return out


def dumps(fields: Dict[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


def audit_line(fields: Dict[str, Any]) -> str:
    """The record's line (newline included): strict JSON, at most MAX_LINE_BYTES bytes."""
    record = bounded_fields(fields)
    line = dumps(record)
    if len(line) + 1 > MAX_LINE_BYTES:
        sizes = sorted(((len(dumps(value)), key) for key, value in record.items()), reverse=True)
        for size, key in sizes:
            record[key], record[f"{key}_omitted_bytes"] = None, size
            line = dumps(record)
            if len(line) + 1 <= MAX_LINE_BYTES:
                break
    return line + "\n"


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
