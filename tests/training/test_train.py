"""`python -m kdem_tf.train`: fails clearly; resume after SIGKILL is tests/training/test_resume.py."""
from __future__ import annotations

import json
import os
import re
import subprocess

from tests.training.conftest import train_args, train_command as _train_cmd, train_env as _env


def _cli(capsys, *argv: str) -> tuple:
    """(exit code, stderr) of `python -m kdem_tf.train ARGV` run in this process (its `main`: the
    same parsing, errors and exit codes as the subprocess, without another TensorFlow start-up)."""
    from kdem_tf.train import main

    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_missing_data_and_nan_loss_are_clear_errors(tfrecords, tmp_path, capsys):
    code, err = _cli(capsys, *train_args(str(tmp_path / "none"), str(tmp_path / "r1")))
    assert code == 2 and "no TFRecord shards for split 'train'" in err
    (tmp_path / "empty").mkdir()
    code, err = _cli(capsys, *train_args(str(tmp_path / "empty"), str(tmp_path / "r0")))
    assert code == 2 and str(tmp_path / "empty") in err
    # A run folder started on other data (another class count) is not resumed on this one.
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "run_info.json").write_text(json.dumps({"num_classes": 999}))
    code, err = _cli(capsys, *train_args(tfrecords, str(tmp_path / "r3")))
    assert code == 2 and "started with 999 classes" in err and "new --out" in err
    code, err = _cli(capsys, *train_args(tfrecords, str(tmp_path / "r2"), "--set", "optim.base_lr=1e30",
                                   "--set", "optim.backbone_lr=1e30", "--set", "optim.warmup_epochs=0", "--quiet"))
    assert code == 2, err[-2000:]
    assert "loss became nan" in err.lower() or "loss became inf" in err.lower()
    assert not os.path.exists(os.path.join(tmp_path, "r2", "checkpoints", "latest.json"))


def test_the_cli_subprocess_fails_with_exit_code_2_and_the_message(tmp_path):
    """The real `python -m kdem_tf.train` process: its exit code and stderr (the cases above run its main)."""
    missing = subprocess.run(_train_cmd(str(tmp_path / "none"), str(tmp_path / "r1")), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no TFRecord shards for split 'train'" in missing.stderr


def test_checkpoints_every_n_epochs_and_one_progress_bar_for_the_run(tfrecords, tmp_path, capsys):
    """checkpoint_every=2 over 3 epochs: epochs 2 and 3 (the last) are saved, not 1, and history.jsonl
    still has every epoch; verbose=3 (the demo's console) shows one bar for the run, no epoch lines."""
    from kdem_tf import config as config_lib
    from kdem_tf.train import train

    config = config_lib.load_config("tiny", overrides=[
        "model.non_local=false", "optim.epochs=3", "optim.steps_per_epoch=1", "checkpoint_every=2",
        "eval_every=0", "mixed_precision=float32"])
    out = tmp_path / "run"
    summary = train(config, "sysu", tfrecords, str(out), verbose=3)
    folders = sorted(n for n in os.listdir(out / "checkpoints") if n.startswith("epoch-"))
    assert folders == ["epoch-0002-step-00000002", "epoch-0003-step-00000003"], folders
    with open(out / "history.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2, 3]
    console = capsys.readouterr()
    assert "training" in console.err and "3/3" in console.err and "epoch 3/3" in console.err
    per_epoch_lines = re.findall(r"^epoch \d+/3", console.out + console.err, flags=re.M)  # verbose 1 and 2 print them
    assert per_epoch_lines == [], per_epoch_lines
    # Where the run's time went: 3 steps = the traced first one + 2 more, 2 checkpoints, the final save.
    assert re.search(r"^time: setup \d+ s, first step \(tracing\) \d+ s, steps \d+ s \(2, [\d.]+ s each\), "
                     r"checkpoints \d+ s \(2, [\d.]+ s each\), final save \d+ s$", console.out, flags=re.M), console.out
    assert set(summary["seconds"]) == {"setup", "first step (tracing)", "steps", "checkpoints", "final save"}
