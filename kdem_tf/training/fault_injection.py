"""Fault injection for the resume tests: KDEM_FAULT_SIGKILL_AT_STEP=N makes the training process
SIGKILL itself right after optimizer step N (a crash at a known point whatever the machine's speed;
a kill from outside after a sleep either missed the epoch on a fast CPU or waited long on a slow one)."""
from __future__ import annotations

import os
from typing import Optional

from kdem_tf.training import TrainingError

SIGKILL_AT_STEP_ENV = "KDEM_FAULT_SIGKILL_AT_STEP"


def sigkill_step() -> Optional[int]:
    """The step after which this process kills itself (SIGKILL_AT_STEP_ENV), or None."""
    value = os.environ.get(SIGKILL_AT_STEP_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise TrainingError(f"{SIGKILL_AT_STEP_ENV}={value!r}: expected a step number >= 1")
    return int(value)


def kill_self() -> None:
    import signal
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
