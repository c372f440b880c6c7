import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ log lines (cuDNN/cuFFT registration, oneDNN)
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


import fcntl
import pathlib
import shutil

import pytest

from kdem_tf import config as _config
from kdem_tf.datasets import sysu as sysu_ds

# The depth of the test networks that do not test ResNet-50 itself: the tiny preset's one bottleneck
# per stage (building and tracing a train step take ~2.5x less than ResNet-50's 16).
TEST_STAGE_BLOCKS = _config.load_config("tiny").model.stage_blocks

@pytest.fixture(autouse=True)
def _float32_policy_after_each_test():
    """Keras' mixed-precision policy is process-global: a test that trains under `auto` (bfloat16 on
    CPUs with AMX/AVX512-BF16) must not leave it to the session fixtures built after it."""
    yield
    import sys

    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")


# Test files that take minutes, slowest first (seconds in a fresh-clone `make test` of 2026-12-01 at
# 0849aff, 2 processes on the 2-core Intel Xeon: pipeline ~140, resume ~120, pipeline datasets ~90,
# distributed ~70, tflite ~60, then 20-40 each). `make test` runs xdist with --dist loadfile
# --no-loadscope-reorder: each process takes the next file when it has at most 2 tests left, in
# collection order, so the long ones start first and the many short files fill in behind them
# (xdist's default order, most tests first, left these few-test files to the end, where one process
# ran them while the other idled).
SLOW_FILES_FIRST = (
    "tests/pipeline/test_pipeline.py",
    "tests/pipeline/test_console.py",
    "tests/training/test_resume.py",
    "tests/pipeline/test_pipeline_datasets.py",
    "tests/test_readme_walkthrough.py",
    "tests/datasets/test_plugin.py",
    "tests/test_command_lines.py",
    "tests/training/test_distributed.py",
    "tests/serving/test_tflite.py",
    "tests/training/test_train.py",
    "tests/training/test_init_from.py",
    "tests/model/test_trainer.py",
    "tests/serving/test_export.py",
    "tests/serving/test_version_swap.py",
    "tests/test_contract_parity.py",
    "tests/serving/test_flip.py",
    "tests/serving/test_audit.py",
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


def shared_path(tmp_path_factory, name: str, build) -> str:
    """The path of `name`, built once per test session by `build(path)` and shared by the xdist
    processes (their base folders sit side by side under one session folder; one flock decides who
    builds, the others wait and read). The folder counts as built once `build` has returned (a marker
    file then): a failed build is started again from an empty folder. Readers must not change what
    they get: a test that modifies a shared folder copies it first."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, common to gw0, gw1, ...
    target = base / "shared" / name
    target.parent.mkdir(exist_ok=True)
    with open(target.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        built = target.parent / f"{name}.built"
        if not built.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            build(target)
            built.touch()
    return str(target)


@pytest.fixture(scope="session")
def tiny_sysu(tmp_path_factory):
    """THE tiny synthetic SYSU-MM01 folder of the session (6 identities at 64x32, seed 0, 2 images per
    camera; the pipeline's data and the serving gallery), shared by the test processes. Read only."""
    def build(path: pathlib.Path) -> None:
        sysu_ds.generate_synthetic(str(path / "sysu"), identities=6, seed=0, image_size=(64, 32), images_per_camera=2,
                                progress=False)

    return os.path.join(shared_path(tmp_path_factory, "tiny_sysu", build), "sysu")


@pytest.fixture(scope="session")
def tiny_tfrecords(tmp_path_factory):
    """THE preprocessed tiny set of the session: a synthetic SYSU-MM01 of 8 identities (2 images per
    camera) through `kdem_tf.data.preprocess` (a real Beam run, in memory), shared by the test
    processes: the training tests and the input pipeline's. Read only."""
    from kdem_tf.data import preprocess

    def build(path: pathlib.Path) -> None:
        root = sysu_ds.generate_synthetic(str(path / "raw"), identities=8, images_per_camera=2, progress=False)
        preprocess.run_preprocess(preprocess.plan_splits("sysu", root), root, str(path / "tfr"),
                                  pipeline_options=preprocess.local_pipeline_options(
                                      ["--runner=DirectRunner", "--direct_running_mode=in_memory"]))

    return os.path.join(shared_path(tmp_path_factory, "tiny_tfrecords", build), "tfr")


# AGW's network at the tiny preset's width and depth (tests/agw_checkpoints.py): its state dict with AGW's
# names, saved in torch's zip format as AGW's train.py saves it (behind DataParallel's `module.`), and the
# run folder kdem_tf.import_checkpoint makes of it. Read only.
AGW_TINY_CLASSES = 4


def agw_tiny_state():
    from tests.agw_checkpoints import agw_state

    tiny = _config.load_config("tiny").model
    return agw_state(width=tiny.width, stage_blocks=tiny.stage_blocks, num_classes=AGW_TINY_CLASSES, seed=3)


@pytest.fixture(scope="session")
def agw_tiny_run(tmp_path_factory):
    """(checkpoint path, imported run folder) of `agw_tiny_state()`, shared by the test processes."""
    def build(path: pathlib.Path) -> None:
        from kdem_tf.import_checkpoint import import_agw_checkpoint
        from tests.agw_checkpoints import agw_checkpoint, write_torch_zip

        write_torch_zip(path / "agw_tiny_best.t", agw_checkpoint(agw_tiny_state(), prefix="module."))
        import_agw_checkpoint(str(path / "agw_tiny_best.t"), str(path / "run"), dataset="sysu",
                              base_config=_config.load_config("tiny"))

    folder = shared_path(tmp_path_factory, "agw_tiny_run", build)
    return os.path.join(folder, "agw_tiny_best.t"), os.path.join(folder, "run")
