import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import pytest


@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """Keras' mixed-precision policy is process-global: a test that trains under `auto` (bfloat16 on
    CPUs with AMX/AVX512-BF16) must not leave it to the session fixtures built after it."""
    yield
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")
