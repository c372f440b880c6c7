"""`python -m kdem_tf.train`: runs, resumes after SIGKILL, fails clearly, and distributes correctly."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from kdem_tf.data import preprocess, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IN_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
TINY = ["--preset", "tiny", "--mixed-precision", "float32", "--set", "model.non_local=false"]


def _env():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    root = synthetic.generate_sysu(str(base / "raw"), identities=8, images_per_camera=2, progress=False)
    out = str(base / "tfr")
    preprocess.run_preprocess(preprocess.plan_splits("sysu", root), root, out, image_size=(64, 32),
                              pipeline_options=preprocess.local_pipeline_options(IN_PROCESS))
    return out


def _train_cmd(data, out, *extra):
    return [sys.executable, "-m", "kdem_tf.train", "--dataset", "sysu", "--data", data, "--out", out, *TINY, *extra]


def test_resumes_after_sigkill_and_finishes(tfrecords, tmp_path):
    out = str(tmp_path / "run")
    args = _train_cmd(tfrecords, out, "--set", "optim.epochs=3", "--set", "eval_every=3", "--quiet")
    process = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    latest = os.path.join(out, "checkpoints", "latest.json")
    deadline = time.time() + 400
    while not os.path.exists(latest) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert os.path.exists(latest), process.communicate()[0].decode()[-2000:]
    process.send_signal(signal.SIGKILL)  # mid-run: epoch 1 is saved, epoch 2 is running
    process.wait()
    assert json.load(open(latest))["epoch"] < 3
    finished = subprocess.run(args[:-1], env=_env(), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    assert "resumed from" in finished.stdout
    assert json.load(open(latest))["epoch"] == 3
    history = [json.loads(line) for line in open(os.path.join(out, "history.jsonl"))]
    assert history[-1]["epoch"] == 3 and history[-1]["step"] == 6  # 3 epochs x 2 steps, none repeated past the kill
    # One line per epoch, the untrained model's evaluation first (not repeated by the resumed run).
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert "loss" not in history[0] and 0.0 <= history[0]["eval"]["mAP"] <= 100.0
    assert "eval" in history[3] and "eval" not in history[1]
    assert os.path.exists(os.path.join(out, "inference_model.keras"))
    assert not [n for n in os.listdir(os.path.join(out, "checkpoints")) if n.startswith(".tmp-")]
    info = json.load(open(os.path.join(out, "run_info.json")))
    assert info["num_classes"] > 0 and info["image_size"] == [64, 32]


def test_missing_data_and_nan_loss_are_clear_errors(tfrecords, tmp_path):
    missing = subprocess.run(_train_cmd(str(tmp_path / "none"), str(tmp_path / "r1")), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no TFRecord shards for split 'train'" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = subprocess.run(_train_cmd(str(tmp_path / "empty"), str(tmp_path / "r0")), env=_env(),
                           capture_output=True, text=True, timeout=300)
    assert empty.returncode == 2 and str(tmp_path / "empty") in empty.stderr
    # A run folder started on other data (another class count) is not resumed on this one.
    (tmp_path / "r3").mkdir()
    (tmp_path / "r3" / "run_info.json").write_text(json.dumps({"num_classes": 999}))
    other = subprocess.run(_train_cmd(tfrecords, str(tmp_path / "r3")), env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert other.returncode == 2 and "started with 999 classes" in other.stderr and "new --out" in other.stderr
    nan = subprocess.run(_train_cmd(tfrecords, str(tmp_path / "r2"), "--set", "optim.base_lr=1e30",
                                    "--set", "optim.backbone_lr=1e30", "--set", "optim.warmup_epochs=0", "--quiet"),
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert nan.returncode == 2, nan.stderr[-2000:]
    assert "loss became nan" in nan.stderr.lower() or "loss became inf" in nan.stderr.lower()
    assert not os.path.exists(os.path.join(tmp_path, "r2", "checkpoints", "latest.json"))


def test_history_is_trimmed_to_the_checkpoint_on_resume(tmp_path):
    from kdem_tf.train_utils import trim_history as _trim_history

    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 0, "eval": {"mAP": 9.0}}\n{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3, "lo')
    _trim_history(str(path), start_epoch=2)  # epoch 3 was cut short by a kill during the append
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [0, 1, 2]
    _trim_history(str(path), start_epoch=0)  # no checkpoint: the run starts over
    assert path.read_text() == ""
