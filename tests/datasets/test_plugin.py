"""A dataset added as one file (tests/datasets/toy_dataset.py) goes through every command: synthetic data,
Beam preprocessing, training (`tiny`) and evaluation from the raw folder and from the TFRecords."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kdem_tf import datasets

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def toy():
    from tests.datasets import toy_dataset

    datasets.register(toy_dataset.Toy())  # the module registered it on import; again is a no-op
    yield datasets.get("toy")
    datasets.unregister("toy")


def test_the_registry_lists_the_built_in_datasets_and_refuses_a_second_owner(toy):
    assert datasets.names()[:4] == ("sysu", "regdb", "llcm", "manifest") and "toy" in datasets.names()
    other = type("Other", (type(toy),), {})()
    with pytest.raises(ValueError, match="already registered"):
        datasets.register(other)
    with pytest.raises(KeyError, match="known: sysu"):
        datasets.get("nope")


def test_a_toy_dataset_runs_preprocess_train_and_evaluate(toy, tmp_path, capsys):
    from kdem_tf import evaluate, train
    from kdem_tf.data import preprocess, synthetic

    raw, tfr, run = tmp_path / "raw", tmp_path / "tfr", tmp_path / "run"
    assert synthetic.main(["--layout", "toy", "--out", str(raw), "--identities", "6", "--images-per-camera", "2"]) == 0
    assert sorted(os.listdir(raw)) == ["test", "train"]
    assert preprocess.main(["--dataset", "toy", "--data-root", str(raw), "--output", str(tfr),
                            "--", "--runner=DirectRunner", "--direct_running_mode=in_memory"]) == 0
    summary = json.load(open(tfr / "summary.json"))
    assert {s: v["images"] for s, v in summary["splits"].items()} == {"train": 12, "probe": 6, "pool": 6}
    assert train.main(["--dataset", "toy", "--data", str(tfr), "--out", str(run), "--preset", "tiny",
                       "--set", "optim.epochs=1", "--quiet"]) == 0
    from serving.export.cli import main as export_main

    export_main(["--run", str(run), "--out", str(run / "export")])  # RUN/export/1: `--model RUN` finds it
    assert os.listdir(run / "export") == ["1"]
    capsys.readouterr()
    raw_json, rec_json = tmp_path / "raw.json", tmp_path / "rec.json"
    assert evaluate.main(["--dataset", "toy", "--data-root", str(raw), "--model", str(run),
                          "--output", str(raw_json)]) == 0
    assert evaluate.main(["--dataset", "toy", "--tfrecords", str(tfr), "--model", str(run),
                          "--output", str(rec_json)]) == 0
    table = capsys.readouterr().out
    assert table.startswith("Toy | 1 trial(s) | query 6 infrared | gallery 6 visible")
    from_raw, from_records = json.load(open(raw_json)), json.load(open(rec_json))
    assert from_raw["dataset"] == "toy" and from_raw["query_count"] == 6 and from_raw["gallery_sizes"] == [6]
    for key in ("rank1", "mAP", "mINP"):  # the same protocol from the folder and from the TFRecords
        assert from_raw[key] == pytest.approx(from_records[key], abs=1e-4)
        assert 0.0 <= from_raw[key] <= 100.0


def test_a_plugin_module_named_in_the_environment_reaches_the_command_lines():
    env = dict(os.environ, KDEM_DATASET_MODULES="tests.datasets.toy_dataset", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "kdem_tf.data.synthetic", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "toy" in out.stdout
    env.pop("KDEM_DATASET_MODULES")
    out = subprocess.run([sys.executable, "-m", "kdem_tf.data.synthetic", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "toy" not in out.stdout
