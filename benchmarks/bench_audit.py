"""The audit log's cost per `--audit-fsync` mode: lines/s the writer thread sustains, and record() on the caller.

    python -m benchmarks.bench_audit [--lines 3000] [--rounds 2] [--folder DIR]

Writes `--lines` search-sized records (what a `:search` with k=10 logs) with
serving.server.audit.AuditLog into a temporary file under `--folder` (put it on the disk
the audit log will live on), alternating the modes `interval` and `every`, and prints per
round: lines/s written (queue to disk), microseconds per line, and the microseconds
`record()` takes on the caller (the server's event loop: bounding + JSON). Asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from serving.server.audit import FSYNC_MODES, AuditLog

SEARCH_RECORD = dict(transport="rest", client="127.0.0.1:50000", method="POST", path="/v1/models/kdem:search",
                     token_name="search-ui", http_status=200, status="OK", latency_ms=41.2, model="kdem",
                     signature="search", version=1, instances=1, k=10, gallery_ids=[list(range(10))],
                     person_ids=[list(range(10))])


def measure(path: str, mode: str, lines: int) -> dict:
    """Writes `lines` records in `mode`; {"lines_per_s", "us_per_line", "record_us", "lost"}."""
    audit = AuditLog(path, fsync=mode, max_pending=lines + 1)
    start, on_caller = time.perf_counter(), 0.0
    for _ in range(lines):
        before = time.perf_counter()
        audit.record(**SEARCH_RECORD)
        on_caller += time.perf_counter() - before
    while audit.written + audit.lost < lines:
        time.sleep(0.001)
    elapsed = time.perf_counter() - start
    audit.close()
    os.unlink(path)
    return {"lines_per_s": lines / elapsed, "us_per_line": elapsed / lines * 1e6,
            "record_us": on_caller / lines * 1e6, "lost": audit.lost}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_audit", description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--folder", default=None, help="where the temporary log goes (default: the system's tmp)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        for round_number in range(1, args.rounds + 1):
            for mode in FSYNC_MODES[::-1]:  # interval, every
                result = measure(os.path.join(folder, f"audit-{mode}.jsonl"), mode, args.lines)
                print(f"round {round_number} --audit-fsync {mode:8s}: {result['lines_per_s']:8.0f} lines/s "
                      f"({result['us_per_line']:7.1f} us/line), record() {result['record_us']:5.1f} us on the caller, "
                      f"lost {result['lost']}", flush=True)


if __name__ == "__main__":
    main()
