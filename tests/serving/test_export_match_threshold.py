"""`serving.export --match-threshold-from metrics.json [--fmr F]`: the threshold and its provenance in
kdem_info.json; a metrics file without it is refused before anything is written."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from kdem_tf.evaluation import match_threshold as mt
from serving.export import cli as export_cli
from serving.export import saved_model


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A run folder of a quarter-width, one-block-per-stage random-init model (fast to export)."""
    import keras

    from kdem_tf.config import ModelConfig

    from kdem_tf.model.model import build_kdem_models

    path = tmp_path_factory.mktemp("threshold_run")
    keras.utils.set_random_seed(0)
    _, model = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=0.25, stage_blocks=(1, 1, 1, 1)), 3, (64, 32))
    model.save(str(path / "inference_model.keras"))
    (path / "run_info.json").write_text(json.dumps({"image_size": [64, 32], "num_classes": 3, "dataset": "sysu"}))
    return str(path)


@pytest.fixture
def metrics_file(tmp_path):
    rng = np.random.default_rng(0)
    report = mt.threshold_report(rng.uniform(0.2, 1.0, 300), rng.uniform(-1.0, 0.8, 20000),
                                 protocol={"dataset": "sysu", "mode": "all", "trials": [0, 1]})
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"mAP": 40.0, "source": "/models/3", mt.METRICS_KEY: report}))
    return path, report


@pytest.mark.parametrize("fmr_args,index", [([], 1), (["--fmr", "0.01"], 0)])
def test_export_records_the_threshold_and_where_it_came_from(small_run, metrics_file, tmp_path, capsys,
                                                             fmr_args, index):
    path, report = metrics_file
    base = tmp_path / "models"
    export_cli.main(["--run", small_run, "--out", str(base), "--match-threshold-from", str(path), *fmr_args])
    record = saved_model.read_info(os.path.join(str(base), "1"))["match_threshold"]
    point = report["operating_points"][index]
    assert record["threshold"] == point["threshold"] and record["tmr"] == point["tmr"]
    assert record["fmr"] == point["fmr"] and record["achieved_fmr"] == point["achieved_fmr"]
    assert record["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["source"]["file"] == str(path) and record["source"]["protocol"]["trials"] == [0, 1]
    assert f"same-person threshold {point['threshold']:.4f}" in capsys.readouterr().out


def test_a_metrics_file_without_the_threshold_is_refused_before_writing(small_run, tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"mAP": 40.0}))
    base = tmp_path / "models"
    with pytest.raises(SystemExit) as error:
        export_cli.main(["--run", small_run, "--out", str(base), "--match-threshold-from", str(old)])
    assert error.value.code == 2
    assert f"{old}: no 'match_threshold.operating_points'" in capsys.readouterr().err
    assert not base.exists()
