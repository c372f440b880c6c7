"""Resume is the same run: an interrupted and resumed `python -m kdem_tf.train` equals the
uninterrupted one bit for bit on a CPU (history losses and every checkpointed variable).

The killed run and its resume are processes of their own (the run SIGKILLs itself); the others run
the CLI's `main()` in the test process (the same code without a TensorFlow start-up each).

Runs: 2 epochs x 2 steps of the tiny preset, no evaluation (equal weights give equal
evaluations; test_checkpointing.py covers the history file at each kill point). The learning rate
changes at the epoch boundary (warm-up 1 epoch, milestone 2) and both modalities are augmented
with erasing, so a resume that replays epoch 0's augmentation seeds or sampling, restarts the
schedule, or loses the momentum slots, BN statistics or metric means gives other numbers.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess

import numpy as np
import pytest

from kdem_tf.training.fault_injection import SIGKILL_AT_STEP_ENV
from tests.training.conftest import train_args, train_command, train_env

SCHEDULE = ["--set", "optim.epochs=2", "--set", "eval_every=0", "--set", "data.random_erasing=0.5"]
# Each run is well under a minute on an idle 2-core CPU (tracing dominates); a loaded one took
# several: the limits leave room for that.
pytestmark = pytest.mark.timeout(2400)


def _train(data: str, out: str, *extra: str, quiet: bool = True) -> str:
    """A run to its end, in this process (`kdem_tf.train.main`, the CLI's code: the runs that need no
    crash need no TensorFlow start-up of their own); returns what it printed ("resumed from ...")
    with quiet=False."""
    from kdem_tf import train

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert train.main(train_args(data, out, *SCHEDULE, *(["--quiet"] if quiet else []), *extra)) == 0
    return printed.getvalue()


def _history(out: str) -> list:
    """history.jsonl without the wall-clock field."""
    with open(os.path.join(out, "history.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f]


def _final_variables(out: str) -> dict:
    """Every variable of the latest checkpoint: model, BN statistics, optimizer, metric means."""
    import tensorflow as tf

    ckpt_dir = os.path.join(out, "checkpoints")
    with open(os.path.join(ckpt_dir, "latest.json")) as f:
        folder = json.load(f)["folder"]
    reader = tf.train.load_checkpoint(os.path.join(ckpt_dir, folder, "ckpt"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def _assert_same_run(out: str, reference: str) -> None:
    assert _history(out) == _history(reference)
    resumed, uninterrupted = _final_variables(out), _final_variables(reference)
    assert sorted(resumed) == sorted(uninterrupted)
    different = [name for name in uninterrupted if not np.array_equal(resumed[name], uninterrupted[name])]
    assert not different, f"{len(different)} of {len(uninterrupted)} variables differ, e.g. {different[:5]}"
    assert not [n for n in os.listdir(os.path.join(out, "checkpoints")) if n.startswith(".tmp-")]


@pytest.fixture(scope="module")
def reference(tfrecords, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("uninterrupted") / "run")
    _train(tfrecords, out)
    history = _history(out)
    # What the comparisons stand on: two epochs, and an epoch 2 that is not epoch 1 again
    # (another rate, other batches).
    assert [r["epoch"] for r in history] == [1, 2] and [r["step"] for r in history] == [2, 4]
    assert history[0]["lr"] != history[1]["lr"] and history[0]["loss"] != history[1]["loss"]
    return out


def test_resume_at_an_epoch_boundary_equals_the_uninterrupted_run(tfrecords, reference, tmp_path):
    out = str(tmp_path / "run")
    _train(tfrecords, out, "--max-steps", "2")
    assert [r["epoch"] for r in _history(out)] == [1]
    assert "resumed from" in _train(tfrecords, out, quiet=False)
    _assert_same_run(out, reference)


def test_resume_after_a_partial_epoch_and_a_sigkill_equals_the_uninterrupted_run(tfrecords, reference, tmp_path):
    out = str(tmp_path / "run")
    # --max-steps 1 stops inside epoch 1: its metric means and its epoch number must carry on.
    _train(tfrecords, out, "--max-steps", "1")
    assert [(r["epoch"], r["step"]) for r in _history(out)] == [(1, 1)]
    # Then SIGKILL inside epoch 2: the process kills itself right after step 3 (kdem_tf.training.fault_injection's
    # fault injection: the same point on a fast or a slow CPU), epoch 1's checkpoint committed.
    latest = os.path.join(out, "checkpoints", "latest.json")
    killed = subprocess.run(train_command(tfrecords, out, *SCHEDULE, "--quiet"), capture_output=True, text=True,
                            env=dict(train_env(), **{SIGKILL_AT_STEP_ENV: "3"}), timeout=1200)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert [(r["epoch"], r["step"]) for r in _history(out)] == [(1, 2)]  # epoch 2's record never written
    assert json.load(open(latest))["step"] == 2
    # The resume after the crash is a new process too, as after a real one.
    resumed = subprocess.run(train_command(tfrecords, out, *SCHEDULE), capture_output=True, text=True,
                             env=train_env(), timeout=1200)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    _assert_same_run(out, reference)
    assert os.path.exists(os.path.join(out, "inference_model.keras"))
    info = json.load(open(os.path.join(out, "run_info.json")))
    assert info["num_classes"] > 0 and info["image_size"] == [64, 32]
