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


# Test files that take minutes, slowest first (serial seconds measured before #16: pipeline 400,
# resume 340, pipeline datasets 270, distributed 175, ...). `make test` runs xdist with --dist loadfile
# --no-loadscope-reorder: the files go to the two processes in collection order, so the long ones
# start first and the many short files fill in behind them (xdist's default order, most tests first,
# left these few-test files to the end, where one process ran them while the other idled).
SLOW_FILES_FIRST = (
    "tests/pipeline/test_pipeline.py",
    "tests/training/test_resume.py",
    "tests/pipeline/test_pipeline_datasets.py",
    "tests/training/test_distributed.py",
    "tests/serving/test_tflite.py",
    "tests/training/test_train.py",
    "tests/model/test_trainer.py",
    "tests/serving/test_audit.py",
    "tests/data/test_preprocess.py",
    "tests/serving/test_export.py",
    "tests/test_console.py",
    "tests/pipeline/test_pipeline_failures.py",
)


def pytest_collection_modifyitems(config, items):
    """Moves the files of SLOW_FILES_FIRST to the front, in that order (a stable sort: the order
    of the tests within a file and of the other files stays). A listed file that is gone (renamed)
    stops the run: the order would silently lose it."""
    missing = [path for path in SLOW_FILES_FIRST if not (config.rootpath / path).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW_FILES_FIRST names missing files: {missing}")
    rank = {path: index for index, path in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))
