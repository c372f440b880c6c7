"""Fixtures of the training tests: one tiny preprocessed synthetic SYSU set for the session."""
from __future__ import annotations

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--preset", "tiny", "--mixed-precision", "float32", "--set", "model.non_local=false"]


def train_env() -> dict:
    """The environment of a `python -m kdem_tf.train` subprocess: this checkout, CPU, no cluster."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO, CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    return env


def train_args(data: str, out: str, *extra: str) -> list:
    """The arguments of a tiny `kdem_tf.train` run (for `kdem_tf.train.main` or the subprocess)."""
    return ["--dataset", "sysu", "--data", data, "--out", out, *TINY, *extra]


def train_command(data: str, out: str, *extra: str) -> list:
    return [sys.executable, "-m", "kdem_tf.train", *train_args(data, out, *extra)]


@pytest.fixture(scope="session")
def tfrecords(tiny_tfrecords):
    """The session's preprocessed tiny set (tests/conftest.py: 8 identities)."""
    return tiny_tfrecords
