"""Training plumbing: strategy choice, precision and XLA defaults, atomic checkpoints."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from typing import List, Optional, Sequence, Tuple


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, mismatched run folder...); the message says what to do."""


def atomic_write_text(path: str, text: str) -> None:
    """Writes a file so that readers see the old or the new content, never a partial one."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def cpu_has_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX-BF16 (fast bfloat16 matmuls in oneDNN)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_mixed_precision(setting: str) -> str:
    """auto: mixed_float16 on GPUs, mixed_bfloat16 on CPUs with bf16 units, else float32."""
    if setting != "auto":
        return setting
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def choose_jit(setting: str) -> bool:
    """auto: XLA on GPUs only (measured 3x slower on this CPU for the KDEM step)."""
    if setting != "auto":
        return setting == "on"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def make_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else MirroredStrategy."""
    import tensorflow as tf

    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if tf_config.get("cluster"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


HISTORY_FILE = "history.jsonl"


# Fault injection for the resume tests: KDEM_FAULT_SIGKILL_AT_STEP=N makes the training process
# SIGKILL itself right after optimizer step N (a crash at a known point whatever the machine's speed;
# a kill from outside after a sleep either missed the epoch on a fast CPU or waited long on a slow one).
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


def checkpoint_folder_name(epoch: int, step: int) -> str:
    """epoch-EEEE-step-SSSSSSSS: unique per save (a partial epoch ended by --max-steps and the
    same epoch completed after the resume get two names), and sorted oldest first."""
    return f"epoch-{epoch:04d}-step-{step:08d}"


def latest_checkpoint(ckpt_dir: str) -> Optional[dict]:
    """{"epoch", "step", "folder", "prefix"} of the last complete checkpoint, or None.

    "step" is None for checkpoints written before it was recorded (the optimizer's
    iterations variable holds it anyway).
    """
    latest_path = os.path.join(ckpt_dir, "latest.json")
    try:
        info = read_json(latest_path)
    except json.JSONDecodeError as error:
        raise TrainingError(f"{latest_path}: not valid JSON ({error}); delete it to start over") from None
    if not info:
        return None
    if not isinstance(info, dict) or "folder" not in info or "epoch" not in info:
        raise TrainingError(f"{latest_path}: expected {{\"epoch\", \"folder\"}}, got {info!r}; "
                            f"delete it to start over")
    folder = os.path.join(ckpt_dir, info["folder"])
    prefix = os.path.join(folder, "ckpt")
    if not os.path.exists(prefix + ".index"):
        raise TrainingError(f"{latest_path} names {folder}, which is missing or incomplete (no "
                            f"{prefix}.index): restore the folder or delete latest.json to start over")
    return {"epoch": int(info["epoch"]), "step": info.get("step"), "folder": folder, "prefix": prefix}


def save_checkpoint(checkpoint, ckpt_dir: str, epoch: int, step: int, is_chief: bool,
                    history: Sequence[dict] = (), keep: int = 3) -> Optional[str]:
    """Writes one checkpoint folder via a temporary folder + rename, then points latest.json at it.

    The folder holds the variables (ckpt.*) and HISTORY_FILE: every history record up to and
    including this checkpoint. The checkpoint is the one source of truth for a resume; the run
    folder's history.jsonl is a copy, rewritten from it (`write_history`) after this returns.
    A kill at any instant therefore leaves a consistent pair: before latest.json is replaced the
    previous checkpoint (with its own history) is the latest, after it the new one is, and a
    stale history.jsonl is rebuilt from the checkpoint on resume (`resume_history`).

    Non-chief workers write to a throwaway folder (every worker must take part in saving under
    MultiWorkerMirroredStrategy) and get None; the chief gets the final folder.
    """
    os.makedirs(ckpt_dir, exist_ok=True)
    name = checkpoint_folder_name(epoch, step)
    tmp = os.path.join(ckpt_dir, f".tmp-{name}-{uuid.uuid4().hex[:6]}")
    checkpoint.write(os.path.join(tmp, "ckpt"))
    if not is_chief:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    atomic_write_text(os.path.join(tmp, HISTORY_FILE), history_text(history))
    final = os.path.join(ckpt_dir, name)
    if os.path.exists(final):  # left by a run killed before it updated latest.json
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(os.path.join(ckpt_dir, "latest.json"),
                      json.dumps({"epoch": epoch, "step": step, "folder": name}))
    for old in sorted(n for n in os.listdir(ckpt_dir) if n.startswith("epoch-") and n != name)[:-(keep - 1) or None]:
        shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    for leftover in os.listdir(ckpt_dir):  # leftovers of crashed writes
        if leftover.startswith(".tmp-epoch-") and leftover != os.path.basename(tmp):
            shutil.rmtree(os.path.join(ckpt_dir, leftover), ignore_errors=True)
    return final


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


# The running means a progress display shows, in this order (the trainer's metric names).
SHOWN_METRICS = ("loss", "id_loss", "wrt_loss", "div_loss", "con_loss", "mi_v_mean")


class RunProgress:
    """One progress bar for a whole training run (`train(verbose=3)`, the demo): steps done of the
    run, the epoch and the running loss; `write` prints a line (an evaluation) above the bar."""

    def __init__(self, total_steps: int, start_step: int, epochs: int):
        import sys

        from tqdm import tqdm

        self._tqdm = tqdm
        self.epochs = epochs
        self.bar = tqdm(total=total_steps, initial=start_step, desc="training", unit="step", file=sys.stderr,
                        dynamic_ncols=True)

    def update(self, epoch: int, metrics: dict) -> None:
        self.bar.set_postfix_str(f"epoch {epoch}/{self.epochs} " + " ".join(
            f"{k} {metrics[k]:.3g}" for k in SHOWN_METRICS[:3] if k in metrics), refresh=False)
        self.bar.update(1)

    def write(self, line: str) -> None:
        self._tqdm.write(line, file=self.bar.fp)

    def close(self) -> None:
        self.bar.close()


class PhaseTimes:
    """Wall seconds of a run's phases, in the order first seen: `with times("evaluations"): ...`.

    `train()` times its setup, the first step (which traces the step function), the other
    steps, the evaluations, the checkpoints and the final save, and returns them; the demo
    and the TFX Trainer's log print `summary()`, where a run's time goes without a profiler."""

    def __init__(self):
        self.seconds: dict = {}
        self.counts: dict = {}

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def phase():
            started = self.clock()
            try:
                yield
            finally:
                self.since(name, started)
        return phase()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1

    def since(self, name: str, started: float) -> None:
        """Adds the time from `started` (a `clock()` reading) to now to `name`."""
        self.add(name, self.clock() - started)

    @staticmethod
    def clock() -> float:
        return time.perf_counter()

    def as_dict(self) -> dict:
        return {name: round(seconds, 2) for name, seconds in self.seconds.items()}

    def summary(self) -> str:
        parts = []
        for name, seconds in self.seconds.items():
            count = self.counts[name]
            each = f" ({count}, {seconds / count:.2f} s each)" if count > 1 else ""
            parts.append(f"{name} {seconds:.0f} s{each}")
        return "time: " + ", ".join(parts)
