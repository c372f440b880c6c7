"""The TFX pipeline end to end on a tiny synthetic SYSU dataset (LocalDagRunner, in-memory Beam).

One pipeline home is shared by the runs of this module, in order:
  T. a partial run up to the Trainer: everything upstream executes; the trained model's mAP m is
     measured with kdem_tf's own protocol code (the oracle of the evaluator's numbers);
  A. threshold m + 0.01: everything up to the Trainer comes from the cache, the model is not
     blessed ("below the threshold"), nothing is pushed;
  B. threshold m - 0.01: the Trainer is cached again, the model is blessed, pushed to
     serving/<name>/<version>/ and its gallery indexed; no baseline (no earlier blessed model);
  C. the same again: every component is served from the cache, nothing new is pushed;
  D0. a partial run with changed training (WORSE_OVERRIDES: the Trainer re-executes): its model
     is measured like T's (worse here, by the measured drop);
  D. the same training (Trainer cached): the baseline is B's blessed model
     (PreviousBlessedModelStrategy), max_map_drop 0 rejects the worse model, nothing is pushed;
  E. the same training (Trainer cached) with max_map_drop just above the measured drop: blessed,
     pushed as a second version;
  F. the same as E through the TFX CLI (`tfx pipeline create` + `tfx run create`): all cached.
The failing runs (a missing data root, a dataset without infrared training images) are
test_pipeline_failures.py.
"""
import glob
import json
import os
import subprocess
import sys

import pytest


from pipeline import configs, local_runner  # noqa: E402
from pipeline.configs import PipelineSettings  # noqa: E402
from tests.pipeline.conftest import OVERRIDES, tiny_settings  # noqa: E402

REPO = configs.REPO_ROOT
UPSTREAM = ("ImportSchemaGen", "ReidExampleGen", "StatisticsGen", "ExampleValidator", "ReidDataCheck", "Trainer")
DOWNSTREAM = ("ReidEvaluator", "Pusher", "ReidGalleryIndex")
EXECUTED = UPSTREAM + DOWNSTREAM
# Run D's training: another seed (init, sampling, augmentation). Measured on this data at ResNet-50
# width (Intel Xeon with AMX, the tiny preset's `auto` precision): mAP 55.09 against 58.26 for the
# default model; the preset's quarter width and other CPUs give other numbers, so the runs measure
# it first (see `runs`). (Learning rates near 0 gave 58.49, better: 2 steps from random init do not help.)
WORSE_OVERRIDES = OVERRIDES + ("seed=1",)
THRESHOLD_MARGIN = 0.01  # mAP points either side of a measured value
METRIC_TOLERANCE = 1e-6
METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def protocol_metrics(report, node="Trainer"):
    """kdem_tf's own protocol metrics of the Trainer's SavedModel on the run's Examples
    (`kdem_tf.evaluation.records`, the code of `python -m kdem_tf.evaluate --tfrecords`)."""
    from kdem_tf.evaluation import EvalOptions
    from kdem_tf.evaluation import records as record_evaluation

    model = os.path.join(_output(report, node, "model"), "Format-Serving")
    return record_evaluation.evaluate_saved_model(model, "sysu", _output(report, "ReidExampleGen", "examples"),
                                                  EvalOptions(mode="all", trials=2), split_names=("query", "gallery"))


def _train_only(settings: PipelineSettings) -> PipelineSettings:
    """A partial run that ends at the Trainer (TFX RunOptions.to_nodes)."""
    from tfx.orchestration import pipeline as tfx_pipeline

    from pipeline import tfx_api

    pipeline, settings = local_runner.build(settings)
    tfx_api.orchestration.LocalDagRunner().run(pipeline, run_options=tfx_pipeline.RunOptions(to_nodes=["Trainer"]))
    return settings


def _record(settings):
    return {"settings": settings, "report": local_runner.run_report(settings),
            "versions": _versions(settings.serving_model_dir)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data):
    """Runs T, A..E of the module docstring in one pipeline home."""
    home = tmp_path_factory.mktemp("home")
    out = {"T": _record(_train_only(tiny_settings(home, tiny_data)))}
    measured = protocol_metrics(out["T"]["report"])
    out["T"]["oracle"] = measured
    for name, min_map in (("A", measured["mAP"] + THRESHOLD_MARGIN), ("B", measured["mAP"] - THRESHOLD_MARGIN),
                          ("C", measured["mAP"] - THRESHOLD_MARGIN)):
        out[name] = _record(local_runner.run(tiny_settings(home, tiny_data, min_map=min_map)))
    # D's model is trained first (a partial run) and measured, so that D's allowed drop is known to
    # reject it on any CPU: 0 when it is worse by more than the margin (measured here: it is), else
    # just below its measured gap (negative: "must beat the baseline by"); E allows just more.
    out["D0"] = _record(_train_only(tiny_settings(home, tiny_data, train_overrides=WORSE_OVERRIDES)))
    drop = measured["mAP"] - protocol_metrics(out["D0"]["report"])["mAP"]
    rejecting = 0.0 if drop > THRESHOLD_MARGIN else drop - THRESHOLD_MARGIN
    out["D"] = _record(local_runner.run(tiny_settings(home, tiny_data, train_overrides=WORSE_OVERRIDES,
                                                      max_map_drop=rejecting)))
    out["D"].update(drop=drop, max_map_drop=rejecting)
    out["E"] = _record(local_runner.run(tiny_settings(home, tiny_data, train_overrides=WORSE_OVERRIDES,
                                                      max_map_drop=drop + THRESHOLD_MARGIN)))
    return out


def _versions(base):
    return sorted(v for v in os.listdir(base) if v.isdigit()) if os.path.isdir(base) else []


def _output(report, node, key):
    return report[node]["outputs"][key][0]


def _states(report, nodes):
    return {node: report[node]["state"] for node in nodes}


def _artifact(settings, uri):
    store = local_runner.open_store(settings)
    return next(a for a in store.get_artifacts() if a.uri == uri)


def _metrics(report) -> dict:
    with open(os.path.join(_output(report, "ReidEvaluator", "evaluation"), "metrics.json")) as f:
        return json.load(f)


def _assert_same_metrics(got: dict, want: dict) -> None:
    for key in METRIC_KEYS + ("num_query", "num_gallery"):
        assert got[key] == pytest.approx(want[key], abs=METRIC_TOLERANCE), key
    assert got["cmc"] == pytest.approx(want["cmc"], abs=METRIC_TOLERANCE)


def _assert_nothing_pushed(run, versions_before):
    report, settings = run["report"], run["settings"]
    blessing = _output(report, "ReidEvaluator", "blessing")
    assert os.path.exists(os.path.join(blessing, "NOT_BLESSED"))
    assert _artifact(settings, blessing).custom_properties["blessed"].int_value == 0
    assert _artifact(settings, _output(report, "Pusher", "pushed_model")).custom_properties["pushed"].int_value == 0
    assert run["versions"] == versions_before
    assert os.path.exists(os.path.join(_output(report, "ReidGalleryIndex", "index"), "NOT_BUILT"))


def test_partial_run_trains_and_evaluates_nothing(runs):
    report = runs["T"]["report"]
    assert _states(report, UPSTREAM) == {n: "COMPLETE" for n in UPSTREAM}
    assert not set(DOWNSTREAM) & set(report) and runs["T"]["versions"] == []
    assert 0.0 < runs["T"]["oracle"]["mAP"] < 100.0


def test_threshold_just_above_the_measured_map_is_not_blessed(runs):
    report = runs["A"]["report"]
    assert _states(report, UPSTREAM) == {n: "CACHED" for n in UPSTREAM}
    assert _states(report, DOWNSTREAM) == {n: "COMPLETE" for n in DOWNSTREAM}
    assert _output(report, "Trainer", "model") == _output(runs["T"]["report"], "Trainer", "model")
    metrics = _metrics(report)
    assert metrics["min_map"] == pytest.approx(runs["T"]["oracle"]["mAP"] + THRESHOLD_MARGIN)
    assert metrics["blessed"] is False and metrics["baseline"] is None
    assert len(metrics["reasons"]) == 1 and "below the threshold" in metrics["reasons"][0]
    _assert_nothing_pushed(runs["A"], [])


def test_evaluator_metrics_equal_the_protocol_code(runs, tmp_path):
    """metrics.json's `current` == kdem_tf.evaluation.records on the trained SavedModel, and ==
    `python -m kdem_tf.evaluate --tfrecords` on the pushed version (the same model, pushed)."""
    from kdem_tf import evaluate

    oracle = runs["T"]["oracle"]
    for name in ("A", "B"):
        _assert_same_metrics(_metrics(runs[name]["report"])["current"], oracle)
    report, settings = runs["B"]["report"], runs["B"]["settings"]
    (version,) = runs["B"]["versions"]
    out = tmp_path / "cli.json"
    assert evaluate.main(["--dataset", "sysu", "--tfrecords", _output(report, "ReidExampleGen", "examples"),
                          "--model", os.path.join(settings.serving_model_dir, version), "--trials", "2",
                          "--output", str(out)]) == 0
    cli = json.loads(out.read_text())
    for key in METRIC_KEYS:
        assert cli[key] == pytest.approx(oracle[key], abs=METRIC_TOLERANCE), key
    # D's worse model: its own numbers too, not the baseline's.
    _assert_same_metrics(_metrics(runs["D"]["report"])["current"], protocol_metrics(runs["D"]["report"]))


def test_examples_have_identity_disjoint_splits(runs, tiny_data):
    from kdem_tf.data import input_pipeline, preprocess
    from kdem_tf.datasets import files as ds_files

    report = runs["B"]["report"]
    uri = _output(report, "ReidExampleGen", "examples")
    examples = _artifact(runs["B"]["settings"], uri)
    assert json.loads(examples.properties["split_names"].string_value) == ["train", "query", "gallery"]
    planned = preprocess.plan_splits("sysu", tiny_data)
    ids = {}
    for split in ("train", "query", "gallery"):
        assert glob.glob(os.path.join(uri, f"Split-{split}", f"{split}-*-of-*.tfrecord.gz"))
        arrays = input_pipeline.load_split(uri, split)
        assert len(arrays) == len(planned[split])
        ids[split] = set(arrays.person_ids.tolist())
        assert ids[split] == ds_files.identities(planned[split])
    assert not ids["train"] & ids["query"] and not ids["train"] & ids["gallery"]
    assert ids["query"] <= ids["gallery"]
    with open(os.path.join(_output(report, "ReidDataCheck", "report"), "data_report.json")) as f:
        data_report = json.load(f)
    assert data_report["problems"] == []
    assert {s: set(v["identities"]) for s, v in data_report["splits"].items()} == ids


def test_schema_and_no_anomalies(runs):
    from tensorflow_metadata.proto.v0 import schema_pb2
    from google.protobuf import text_format

    report = runs["B"]["report"]
    with open(os.path.join(_output(report, "ImportSchemaGen", "schema"), "schema.pbtxt")) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    from kdem_tf.data import schema as kschema
    assert {f.name for f in schema.feature} == set(kschema.FEATURE_SPEC)
    anomalies = _output(report, "ExampleValidator", "anomalies")
    for split in ("train", "query", "gallery"):
        assert os.path.exists(os.path.join(anomalies, f"Split-{split}", "SchemaDiff.pb"))
    assert os.listdir(_output(report, "StatisticsGen", "statistics"))


def test_second_run_resumes_from_cache_and_pushes(runs):
    report, settings = runs["B"]["report"], runs["B"]["settings"]
    assert _states(report, UPSTREAM) == {n: "CACHED" for n in UPSTREAM}
    assert _states(report, DOWNSTREAM) == {n: "COMPLETE" for n in DOWNSTREAM}
    model = _output(report, "Trainer", "model")
    assert model == _output(runs["T"]["report"], "Trainer", "model")
    assert os.path.exists(os.path.join(model, "Format-Serving", "saved_model.pb"))
    run_dir = _output(report, "Trainer", "model_run")
    with open(os.path.join(run_dir, "run_info.json")) as f:
        assert json.load(f)["image_size"] == [64, 32]
    assert glob.glob(os.path.join(run_dir, "logs", "*tfevents*"))
    with open(os.path.join(run_dir, "train_summary.json")) as f:
        assert json.load(f)["steps"] == 2  # TrainArgs.num_steps
    with open(os.path.join(_output(report, "ReidEvaluator", "evaluation"), "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["min_map"] == pytest.approx(runs["T"]["oracle"]["mAP"] - THRESHOLD_MARGIN)
    assert metrics["blessed"] is True and metrics["reasons"] == []
    assert metrics["baseline"] is None and metrics["baseline_model_id"] is None  # A's blessing was NOT_BLESSED
    assert 0.0 <= metrics["current"]["mAP"] <= 100.0 and metrics["protocol"]["trials"] == 2
    blessing = _artifact(settings, _output(report, "ReidEvaluator", "blessing"))
    assert blessing.custom_properties["blessed"].int_value == 1
    (version,) = runs["B"]["versions"]
    pushed = os.path.join(settings.serving_model_dir, version)
    assert os.path.exists(os.path.join(pushed, "saved_model.pb"))
    index = os.path.join(settings.index_base_dir, version)
    with open(os.path.join(index, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["count"] == len(__import__("kdem_tf.data.input_pipeline", fromlist=["x"]).load_split(
        _output(report, "ReidExampleGen", "examples"), "gallery"))


def test_unchanged_run_is_served_from_cache(runs):
    report = runs["C"]["report"]
    assert _states(report, EXECUTED) == {n: "CACHED" for n in EXECUTED}
    assert runs["C"]["versions"] == runs["B"]["versions"]


def test_worse_model_is_rejected_against_the_last_blessed_model(runs):
    report, blessed = runs["D"]["report"], _metrics(runs["B"]["report"])
    assert _states(report, ("ImportSchemaGen", "ReidExampleGen", "StatisticsGen", "ExampleValidator",
                            "ReidDataCheck")) == {n: "CACHED" for n in UPSTREAM[:-1]}
    assert runs["D0"]["report"]["Trainer"]["state"] == "COMPLETE" and report["Trainer"]["state"] == "CACHED"
    assert _states(report, DOWNSTREAM) == {n: "COMPLETE" for n in DOWNSTREAM}
    metrics = _metrics(report)
    assert metrics["current"]["mAP"] == pytest.approx(blessed["current"]["mAP"] - runs["D"]["drop"], abs=1e-4)
    assert metrics["current_model_id"] != blessed["current_model_id"]
    assert metrics["baseline_model_id"] == blessed["current_model_id"]
    assert metrics["baseline_model"] == blessed["current_model"]
    _assert_same_metrics(metrics["baseline"], blessed["current"])
    assert metrics["max_map_drop"] == pytest.approx(runs["D"]["max_map_drop"]) and metrics["blessed"] is False
    assert len(metrics["reasons"]) == 1 and "worse than the last blessed model" in metrics["reasons"][0]
    _assert_nothing_pushed(runs["D"], runs["B"]["versions"])


def test_allowed_drop_blesses_and_pushes_a_new_version(runs):
    report, settings = runs["E"]["report"], runs["E"]["settings"]
    assert _states(report, UPSTREAM) == {n: "CACHED" for n in UPSTREAM}
    assert _states(report, DOWNSTREAM) == {n: "COMPLETE" for n in DOWNSTREAM}
    metrics, rejected = _metrics(report), _metrics(runs["D"]["report"])
    assert metrics["max_map_drop"] == pytest.approx(runs["D"]["drop"] + THRESHOLD_MARGIN)
    assert metrics["current_model_id"] == rejected["current_model_id"]
    assert metrics["baseline_model_id"] == _metrics(runs["B"]["report"])["current_model_id"]
    assert metrics["blessed"] is True and metrics["reasons"] == []
    (first,) = runs["B"]["versions"]
    assert len(runs["E"]["versions"]) == 2 and runs["E"]["versions"][0] == first
    pushed = _artifact(settings, _output(report, "Pusher", "pushed_model"))
    assert pushed.custom_properties["pushed"].int_value == 1
    assert pushed.custom_properties["pushed_version"].string_value == runs["E"]["versions"][1]
    with open(os.path.join(settings.serving_model_dir, runs["E"]["versions"][1], "saved_model.pb"), "rb") as f:
        with open(os.path.join(_output(report, "Trainer", "model"), "Format-Serving", "saved_model.pb"), "rb") as g:
            assert f.read() == g.read()  # the pushed version is D's (worse) model
    assert os.path.exists(os.path.join(settings.index_base_dir, runs["E"]["versions"][1], "manifest.json"))


def test_tfx_cli_create_and_run(runs, tiny_data, tmp_path):
    """`tfx pipeline create` + `tfx run create` with run E's settings on the same home: all cached."""
    settings = runs["E"]["settings"]
    env = dict(os.environ, LOCAL_HOME=str(tmp_path / "cli"), KDEM_PIPELINE_NAME=settings.pipeline_name,
               KDEM_PIPELINE_HOME=settings.home, KDEM_DATA_ROOT=settings.data_root, KDEM_PRESET="tiny",
               KDEM_TRAIN_STEPS="2", KDEM_EVAL_TRIALS="2", KDEM_MIN_MAP=repr(settings.min_map),
               KDEM_MAX_MAP_DROP=repr(settings.max_map_drop), KDEM_BEAM_MODE="in_memory",
               KDEM_TRAIN_OVERRIDES=";".join(settings.train_overrides), KDEM_CODE_FINGERPRINT="tests")
    tfx = os.path.join(os.path.dirname(sys.executable), "tfx")
    create = subprocess.run([tfx, "pipeline", "create", "--engine", "local", "--pipeline_path",
                             "pipeline/local_runner.py"], cwd=REPO, env=env, capture_output=True, text=True)
    assert create.returncode == 0, create.stderr[-3000:]
    assert f'Pipeline "{settings.pipeline_name}" created successfully' in create.stdout
    run = subprocess.run([tfx, "run", "create", "--engine", "local", "--pipeline_name", settings.pipeline_name],
                         cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    report = local_runner.run_report(settings)
    assert _states(report, EXECUTED) == {n: "CACHED" for n in EXECUTED}
    assert "ReidEvaluator" in run.stdout and "CACHED" in run.stdout
