"""history.jsonl: one JSON record per epoch, committed inside each checkpoint and copied to the run folder."""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Tuple

from kdem_tf.artifacts import HISTORY_FILE, atomic_write_text
from kdem_tf.training import TrainingError


def history_text(records: Sequence[dict]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def read_history(path: str) -> Tuple[List[dict], int]:
    """(records, number of unreadable lines) of a history.jsonl; a missing file has none.
    A line cut short by a kill during a write of the old append-only format is unreadable."""
    if not os.path.exists(path):
        return [], 0
    records, unreadable = [], 0
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                unreadable += 1
    return records, unreadable


def write_history(path: str, records: Sequence[dict]) -> None:
    atomic_write_text(path, history_text(records))


def trim_history(path: str, start_epoch: int) -> List[dict]:
    """The records of history.jsonl up to `start_epoch` (none when 0), rewritten when that
    drops any. For checkpoints without their own history copy (written before it existed)."""
    records, unreadable = read_history(path)
    kept = [r for r in records if start_epoch > 0 and r["epoch"] <= start_epoch]
    if unreadable or len(kept) != len(records):
        write_history(path, kept)
    return kept


def resume_history(latest: Optional[dict], history_path: str) -> List[dict]:
    """The history records a resumed run continues from, and history.jsonl rewritten to them.

    With a checkpoint: its own HISTORY_FILE (what was true when it was written), else, for an
    older checkpoint, history.jsonl trimmed to its epoch. Without one: nothing (a fresh start).
    """
    if latest is None:
        records = []
    else:
        copy = os.path.join(latest["folder"], HISTORY_FILE)
        if not os.path.exists(copy):
            return trim_history(history_path, latest["epoch"])
        records, unreadable = read_history(copy)
        if unreadable:
            raise TrainingError(f"{copy}: {unreadable} unreadable line(s) in the checkpoint's history")
    if records or os.path.exists(history_path):
        write_history(history_path, records)
    return records
