"""Audit records without a server: bounded strict-JSON lines, trusted proxies, the writer's fsync and reopening.

Real files in tmp_path; rotation as logrotate does it (rename, then the writer must notice).
"""
import json
import os
import time

import pytest

from serving.server.audit import MAX_LINE_BYTES, MAX_LIST_ITEMS, MAX_STRING_CHARS, AuditLog, audit_line
from serving.server.rest_audit import TrustedProxies


def strict_json(line: str):
    """json.loads that refuses NaN / Infinity (parse_constant) as a strict parser does."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


def test_client_controlled_fields_are_bounded_and_their_length_recorded():
    line = audit_line({"signature": "s" * 5_000_000, "model": "m" * 300, "status": "OK"})
    record = strict_json(line)
    assert len(line.encode()) < 16 * 1024 and line.endswith("\n") and line.count("\n") == 1
    assert record["signature"] == "s" * MAX_STRING_CHARS and record["signature_length"] == 5_000_000
    assert record["model"] == "m" * MAX_STRING_CHARS and record["model_length"] == 300
    assert record["status"] == "OK" and "status_length" not in record


def test_nan_infinity_and_huge_numbers_become_strict_json():
    record = strict_json(audit_line({"k": float("nan"), "ks": [float("inf"), -float("inf"), 1.5],
                                     "version": 10 ** 5000, "nested": {"a": [[float("nan")]]}}))
    assert record["k"] == "NaN" and record["ks"] == ["Infinity", "-Infinity", 1.5]
    assert record["version"] == "<integer of 16610 bits>" and record["nested"] == {"a": [["NaN"]]}


def test_long_lists_are_cut_and_a_line_over_the_limit_leaves_its_largest_field_out():
    record = strict_json(audit_line({"gallery_ids": list(range(1000)), "status": "OK"}))
    assert record["gallery_ids"] == list(range(MAX_LIST_ITEMS)) and record["gallery_ids_count"] == 1000
    line = audit_line({"gallery_ids": [[123456] * 100] * 100, "person_ids": [[1]] * 3, "status": "OK"})
    record = strict_json(line)
    assert len(line.encode()) <= MAX_LINE_BYTES
    assert record["gallery_ids"] is None and record["gallery_ids_omitted_bytes"] > MAX_LINE_BYTES
    assert record["person_ids"] == [[1]] * 3 and record["status"] == "OK"


def test_x_forwarded_for_counts_only_from_a_trusted_proxy():
    nobody = TrustedProxies()
    assert nobody.client("127.0.0.1", "203.0.113.9") == ("127.0.0.1", None)
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    assert proxies.client("198.51.100.1", "203.0.113.9") == ("198.51.100.1", None)  # not a proxy of ours
    # the right-most hop a trusted proxy saw; what the client wrote further left proves nothing
    assert proxies.client("10.1.2.3", "6.6.6.6, 203.0.113.9, 10.0.0.7") == ("203.0.113.9", "10.1.2.3")
    assert proxies.client("127.0.0.1", "not-an-address") == ("invalid:not-an-address", "127.0.0.1")
    with pytest.raises(ValueError, match="--trusted-proxy 'ten/8'"):
        TrustedProxies(["ten/8"])


def _read(path):
    with open(path) as f:
        return [strict_json(line) for line in f.read().splitlines()]


def _wait_written(audit, count, timeout=10.0):
    deadline = time.time() + timeout
    while audit.written < count:
        assert time.time() < deadline, f"{audit.written} of {count} lines written"
        time.sleep(0.01)


def test_a_renamed_log_is_reopened_as_logrotate_expects(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    audit = AuditLog(path, fsync="every")
    try:
        audit.record(n=1)
        _wait_written(audit, 1)
        os.rename(path, path + ".1")  # logrotate's default: rename, then a new file at the path
        audit.record(n=2)
        _wait_written(audit, 2)
        audit.reopen()  # SIGHUP's handler
        audit.record(n=3)
        _wait_written(audit, 3)
    finally:
        audit.close()
    assert [r["n"] for r in _read(path + ".1")] == [1]
    assert [r["n"] for r in _read(path)] == [2, 3]
    assert audit.reopened == 2 and audit.lost == 0
    assert audit.stats() == {"written": 3, "lost": 0, "failing": False, "reopened": 2, "fsync": "every"}


def test_interval_mode_syncs_an_idle_log_and_close_writes_everything(tmp_path):
    path = str(tmp_path / "audit.jsonl")
    audit = AuditLog(path, fsync="interval", fsync_interval_s=0.05)
    for n in range(50):
        audit.record(n=n)
    _wait_written(audit, 50)
    deadline = time.time() + 5
    while audit.has_unsynced_lines:  # synced by the idle writer, not by a later record
        assert time.time() < deadline
        time.sleep(0.01)
    audit.close()
    assert [r["n"] for r in _read(path)] == list(range(50))
    with pytest.raises(ValueError, match="audit fsync mode 'sometimes'"):
        AuditLog(path, fsync="sometimes")
