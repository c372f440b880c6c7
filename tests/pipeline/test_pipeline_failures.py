"""The TFX pipeline's failing runs (LocalDagRunner, in-memory Beam): a missing data root (the example
component's error names the path) and a dataset whose train split lost its infrared images (the data
check fails the run before training; a re-run resumes from the cache). The passing runs are
test_pipeline.py; this file is apart so that the two test processes share the pipeline tests.
"""
import shutil

import pytest

from pipeline import local_runner
from tests.pipeline.conftest import tiny_settings

EXAMPLE_NODES = ("ReidExampleGen", "StatisticsGen", "ExampleValidator")


def test_missing_data_root_names_the_path(tmp_path):
    missing = tmp_path / "no_such_dataset"
    settings = tiny_settings(tmp_path / "home", missing)
    with pytest.raises(Exception) as error:
        local_runner.run(settings)
    assert str(missing) in str(error.value)
    report = local_runner.run_report(settings)
    assert report["ReidExampleGen"]["state"] == "FAILED"
    assert "Trainer" not in report


def test_broken_dataset_fails_before_training_and_resumes_from_cache(tmp_path, tiny_data):
    from kdem_tf.datasets import sysu as sysu_ds

    root = tmp_path / "broken"
    shutil.copytree(tiny_data, root)
    train_ids = sysu_ds.read_ids(str(root), "train") + sysu_ds.read_ids(str(root), "val")
    for pid in train_ids:  # the train identities lose every infrared image
        for cam in (3, 6):
            shutil.rmtree(root / f"cam{cam}" / f"{pid:04d}", ignore_errors=True)
    settings = tiny_settings(tmp_path / "home", root)
    for attempt in range(2):
        with pytest.raises(Exception) as error:
            local_runner.run(settings)
        assert "train split has no infrared images" in str(error.value)
        report = local_runner.run_report(settings)
        assert report["ReidDataCheck"]["state"] == "FAILED"
        assert "Trainer" not in report
        expected = "COMPLETE" if attempt == 0 else "CACHED"
        assert {n: report[n]["state"] for n in EXAMPLE_NODES} == {n: expected for n in EXAMPLE_NODES}
