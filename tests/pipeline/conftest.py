"""Fixtures of the pipeline tests: the tiny synthetic SYSU dataset and the tiny pipeline settings."""
import pytest

from pipeline.configs import PipelineSettings

# The tiny preset's model (quarter width) without its non-local blocks trains 2 steps from random init:
# these tests are about the orchestration; the non-local blocks are tests/model's (training step, export).
# Measured: tracing the first step 10 s without them, 16-17 s with them (2-core Intel Xeon, #16). The code
# fingerprint is pinned: other work editing kdem_tf/ during the test must not retrain.
OVERRIDES = ("model.non_local=false",)


def tiny_settings(home, data_root, **changes) -> PipelineSettings:
    base = dict(pipeline_name="kdem-test", home=str(home), data_root=str(data_root), preset="tiny",
                train_overrides=OVERRIDES, train_steps=2, code_fingerprint="tests", eval_trials=2, min_map=0.0,
                beam_mode="in_memory")
    base.update(changes)
    return PipelineSettings(**base)


@pytest.fixture(scope="session")
def tiny_data(tiny_sysu):
    """The session's tiny SYSU folder (tests/conftest.py: 6 identities at 64x32, 2 images per camera;
    read only: a test that breaks it copies it first)."""
    return tiny_sysu
