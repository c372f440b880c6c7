"""tf.distribute: two logical devices equal one device; two worker processes stay in sync."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from kdem_tf.data import preprocess, synthetic

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="", **extra)
    if "TF_CONFIG" not in extra:
        env.pop("TF_CONFIG", None)
    return env


def test_two_logical_devices_take_the_same_step_as_one():
    result = subprocess.run([sys.executable, os.path.join(HERE, "dist_check.py")], env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["max_weight_change"] > 1e-6  # the step did move the weights
    # Tolerance: float32 sums over 2 replicas vs 1 reorder additions; observed ~1e-8.
    assert out["max_weight_diff"] < 1e-5, out
    for name, value in out["one"].items():
        assert out["two"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_worker_processes_end_with_identical_weights(tmp_path):
    root = synthetic.generate_sysu(str(tmp_path / "raw"), identities=6, images_per_camera=2, progress=False)
    data = str(tmp_path / "tfr")
    preprocess.run_preprocess(preprocess.plan_splits("sysu", root), root, data,
                              pipeline_options=preprocess.local_pipeline_options(["--direct_running_mode=in_memory"]))
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        args = [sys.executable, os.path.join(HERE, "mw_worker.py"), data, str(tmp_path / f"run{index}"),
                str(tmp_path / f"weights{index}.npz")]
        workers.append(subprocess.Popen(args, env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [w.communicate(timeout=600)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-3000:]
    first, second = (np.load(tmp_path / f"weights{i}.npz") for i in range(2))
    assert int(first["replicas"]) == 2
    weight_keys = [k for k in first.files if k.startswith("w")]
    assert len(weight_keys) > 100
    differing = [k for k in weight_keys if not np.array_equal(first[k], second[k])]
    # Every trained weight is identical. BatchNorm moving statistics are per worker (each
    # worker's local batches, as PyTorch DDP without SyncBN); the chief's are the ones saved.
    assert differing and all(k.endswith(("moving_mean", "moving_variance")) for k in differing), differing[:10]
    assert len(differing) < len(weight_keys) // 2
    # Only the chief (worker 0) writes the run folder's outputs.
    assert os.path.exists(tmp_path / "run0" / "inference_model.keras")
    assert not os.path.exists(tmp_path / "run1" / "inference_model.keras")
