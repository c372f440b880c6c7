"""kdem_tf.training (checkpointing, run_history, fault_injection): checkpoints and the history committed with them, at every kill point."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from kdem_tf import artifacts

from kdem_tf.training import TrainingError
from kdem_tf.training.checkpointing import latest_checkpoint, save_checkpoint
from kdem_tf.training.run_history import read_history, resume_history, trim_history, write_history


def _checkpoint(value: float):
    variable = tf.Variable(value)
    return tf.train.Checkpoint(weight=variable), variable


def _record(epoch: int, loss: float) -> dict:
    return {"epoch": epoch, "step": 2 * epoch, "loss": loss}


def _saved_run(tmp_path, epochs: int = 2):
    """A run folder as training leaves it after `epochs` epochs (checkpoint, then history copy)."""
    ckpt_dir, history_path = str(tmp_path / "checkpoints"), str(tmp_path / "history.jsonl")
    checkpoint, variable = _checkpoint(0.0)
    history = []
    for epoch in range(1, epochs + 1):
        variable.assign(float(epoch))
        history.append(_record(epoch, 10.0 - epoch))
        save_checkpoint(checkpoint, ckpt_dir, epoch, 2 * epoch, True, history)
        write_history(history_path, history)
    return ckpt_dir, history_path, history


def test_a_checkpoint_carries_the_history_up_to_it(tmp_path):
    ckpt_dir, history_path, history = _saved_run(tmp_path)
    latest = latest_checkpoint(ckpt_dir)
    assert (latest["epoch"], latest["step"]) == (2, 4)
    assert os.path.basename(latest["folder"]) == "epoch-0002-step-00000004"
    assert read_history(os.path.join(latest["folder"], artifacts.HISTORY_FILE)) == (history, 0)
    restored, variable = _checkpoint(-1.0)
    restored.read(latest["prefix"]).assert_existing_objects_matched()
    assert float(variable.numpy()) == 2.0


def test_kill_after_latest_json_before_the_history_copy_is_repaired_on_resume(tmp_path):
    ckpt_dir, history_path, history = _saved_run(tmp_path)
    write_history(history_path, history[:1])  # the copy still shows epoch 1 only
    assert resume_history(latest_checkpoint(ckpt_dir), history_path) == history
    assert read_history(history_path) == (history, 0)


def test_kill_between_the_rename_and_latest_json_resumes_from_the_previous_checkpoint(tmp_path):
    ckpt_dir, history_path, history = _saved_run(tmp_path, epochs=1)
    # Epoch 2's folder is complete but latest.json still names epoch 1, and the history copy
    # was not rewritten: the resume goes on from epoch 1 with epoch 1's history.
    stale = os.path.join(ckpt_dir, "epoch-0002-step-00000004")
    shutil.copytree(os.path.join(ckpt_dir, "epoch-0001-step-00000002"), stale)
    latest = latest_checkpoint(ckpt_dir)
    assert latest["epoch"] == 1 and resume_history(latest, history_path) == history
    # Saving epoch 2 again replaces the stale folder.
    checkpoint, variable = _checkpoint(7.0)
    save_checkpoint(checkpoint, ckpt_dir, 2, 4, True, history + [_record(2, 1.0)])
    assert latest_checkpoint(ckpt_dir)["folder"] == stale
    assert read_history(os.path.join(stale, artifacts.HISTORY_FILE))[0][-1]["loss"] == 1.0


def test_kill_during_the_checkpoint_write_leaves_the_previous_one_and_no_leftover(tmp_path):
    ckpt_dir, history_path, history = _saved_run(tmp_path, epochs=1)
    leftover = os.path.join(ckpt_dir, ".tmp-epoch-0002-step-00000004-abcdef")
    os.makedirs(leftover)
    (open(os.path.join(leftover, "ckpt.index"), "w")).close()
    assert latest_checkpoint(ckpt_dir)["epoch"] == 1
    checkpoint, _ = _checkpoint(3.0)
    save_checkpoint(checkpoint, ckpt_dir, 2, 4, True, history)
    assert not os.path.exists(leftover)


def test_old_checkpoints_are_pruned_but_never_the_latest(tmp_path):
    ckpt_dir, _, _ = _saved_run(tmp_path, epochs=5)
    folders = sorted(n for n in os.listdir(ckpt_dir) if n.startswith("epoch-"))
    assert folders == [f"epoch-{e:04d}-step-{2 * e:08d}" for e in (3, 4, 5)]
    assert os.path.basename(latest_checkpoint(ckpt_dir)["folder"]) == folders[-1]


def test_no_checkpoint_starts_the_history_over(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text(json.dumps({"epoch": 0, "eval": {"mAP": 3.0}}) + "\n")
    assert resume_history(None, str(path)) == [] and path.read_text() == ""
    assert resume_history(None, str(tmp_path / "absent.jsonl")) == []
    assert not (tmp_path / "absent.jsonl").exists()


def test_history_is_trimmed_for_a_checkpoint_without_its_own_copy(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 0, "eval": {"mAP": 9.0}}\n{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "lo')
    assert [r["epoch"] for r in trim_history(str(path), start_epoch=2)] == [0, 1, 2]  # 3: cut by a kill
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [0, 1, 2]
    assert trim_history(str(path), start_epoch=0) == [] and path.read_text() == ""


def test_latest_json_naming_a_missing_folder_is_an_error_naming_both(tmp_path):
    ckpt_dir, _, _ = _saved_run(tmp_path, epochs=1)
    shutil.rmtree(os.path.join(ckpt_dir, "epoch-0001-step-00000002"))
    with pytest.raises(TrainingError) as error:
        latest_checkpoint(ckpt_dir)
    message = str(error.value)
    assert os.path.join(ckpt_dir, "latest.json") in message
    assert os.path.join(ckpt_dir, "epoch-0001-step-00000002") in message and "delete latest.json" in message


def test_unreadable_latest_json_is_an_error_naming_it(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    (ckpt_dir / "latest.json").write_text('{"epoch": 1, "fol')
    with pytest.raises(TrainingError, match="latest.json: not valid JSON") as error:
        latest_checkpoint(str(ckpt_dir))
    assert str(ckpt_dir / "latest.json") in str(error.value)
    (ckpt_dir / "latest.json").write_text('{"epoch": 1}')
    with pytest.raises(TrainingError, match="expected"):
        latest_checkpoint(str(ckpt_dir))


def test_a_corrupt_history_copy_in_a_checkpoint_is_an_error_naming_it(tmp_path):
    ckpt_dir, history_path, _ = _saved_run(tmp_path, epochs=1)
    latest = latest_checkpoint(ckpt_dir)
    copy = os.path.join(latest["folder"], artifacts.HISTORY_FILE)
    with open(copy, "a") as f:
        f.write('{"epoch": 2, "lo')
    with pytest.raises(TrainingError, match="unreadable") as error:
        resume_history(latest, history_path)
    assert copy in str(error.value)


def test_non_chief_writes_leave_nothing(tmp_path):
    checkpoint, _ = _checkpoint(np.float32(1.0))
    assert save_checkpoint(checkpoint, str(tmp_path), 1, 2, False, [_record(1, 1.0)]) is None
    assert os.listdir(tmp_path) == []


def test_sigkill_step_reads_the_fault_injection_variable(monkeypatch):
    from kdem_tf.training.fault_injection import SIGKILL_AT_STEP_ENV, sigkill_step

    monkeypatch.delenv(SIGKILL_AT_STEP_ENV, raising=False)
    assert sigkill_step() is None
    monkeypatch.setenv(SIGKILL_AT_STEP_ENV, "3")
    assert sigkill_step() == 3
    for bad in ("0", "-1", "three"):
        monkeypatch.setenv(SIGKILL_AT_STEP_ENV, bad)
        with pytest.raises(TrainingError, match=SIGKILL_AT_STEP_ENV):
            sigkill_step()
