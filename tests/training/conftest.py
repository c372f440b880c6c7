"""Fixtures of the training tests: one tiny preprocessed synthetic SYSU set for the session."""
from __future__ import annotations

import os
import sys

import pytest

from kdem_tf.data import preprocess, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IN_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
TINY = ["--preset", "tiny", "--mixed-precision", "float32", "--set", "model.non_local=false"]


def train_env() -> dict:
    """The environment of a `python -m kdem_tf.train` subprocess: this checkout, CPU, no cluster."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def train_command(data: str, out: str, *extra: str) -> list:
    return [sys.executable, "-m", "kdem_tf.train", "--dataset", "sysu", "--data", data, "--out", out, *TINY, *extra]


@pytest.fixture(scope="session")
def tfrecords(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    root = synthetic.generate_sysu(str(base / "raw"), identities=8, images_per_camera=2, progress=False)
    out = str(base / "tfr")
    preprocess.run_preprocess(preprocess.plan_splits("sysu", root), root, out,
                              pipeline_options=preprocess.local_pipeline_options(IN_PROCESS))
    return out
