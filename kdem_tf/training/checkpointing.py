"""Atomic checkpoints: each in its own folder (variables and the history up to it), written to a
temporary folder and renamed, then named by `latest.json`; a kill at any instant leaves the last
complete one in charge."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from typing import Optional, Sequence

from kdem_tf.artifacts import HISTORY_FILE, LATEST_CHECKPOINT_FILE, atomic_write_text, publish_staged
from kdem_tf.training import TrainingError
from kdem_tf.training.run_history import history_text


def read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def checkpoint_folder_name(epoch: int, step: int) -> str:
    """epoch-EEEE-step-SSSSSSSS: unique per save (a partial epoch ended by --max-steps and the
    same epoch completed after the resume get two names), and sorted oldest first."""
    return f"epoch-{epoch:04d}-step-{step:08d}"


def latest_checkpoint(ckpt_dir: str) -> Optional[dict]:
    """{"epoch", "step", "folder", "prefix"} of the last complete checkpoint, or None.

    "step" is None for checkpoints written before it was recorded (the optimizer's
    iterations variable holds it anyway).
    """
    latest_path = os.path.join(ckpt_dir, LATEST_CHECKPOINT_FILE)
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
    final = publish_staged(tmp, os.path.join(ckpt_dir, name))  # replaces one left by a run killed before
    atomic_write_text(os.path.join(ckpt_dir, LATEST_CHECKPOINT_FILE),
                      json.dumps({"epoch": epoch, "step": step, "folder": name}))
    for old in sorted(n for n in os.listdir(ckpt_dir) if n.startswith("epoch-") and n != name)[:-(keep - 1) or None]:
        shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    for leftover in os.listdir(ckpt_dir):  # leftovers of crashed writes
        if leftover.startswith(".tmp-epoch-") and leftover != os.path.basename(tmp):
            shutil.rmtree(os.path.join(ckpt_dir, leftover), ignore_errors=True)
    return final
