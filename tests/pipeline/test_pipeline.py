"""The TFX pipeline end to end on a tiny synthetic SYSU dataset (LocalDagRunner, in-memory Beam).

One pipeline home is shared by the runs of this module, in order:
  A. unreachable mAP threshold: everything runs, the model is not blessed, nothing is pushed;
  B. reachable threshold: everything up to the Trainer comes from the cache, the model is
     blessed, pushed to serving/<name>/<version>/ and its gallery indexed;
  C. the same again: every component is served from the cache, nothing new is pushed;
  D. the same through the TFX CLI (`tfx pipeline create` + `tfx run create`): all cached.
Plus a missing data root (the example component's error names the path) and a dataset whose
train split lost its infrared images (the data check fails the run before training; a re-run
resumes from the cache).
"""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest


from pipeline import configs, local_runner  # noqa: E402
from pipeline.configs import PipelineSettings  # noqa: E402

REPO = configs.REPO_ROOT
UPSTREAM = ("ImportSchemaGen", "ReidExampleGen", "StatisticsGen", "ExampleValidator", "ReidDataCheck", "Trainer")
EXECUTED = UPSTREAM + ("ReidEvaluator", "Pusher", "ReidGalleryIndex")
# The full model (non-local blocks included) trains 2 steps from random init.
# The code fingerprint is pinned: other work editing kdem_tf/ during the test must not retrain.
OVERRIDES = ()


def tiny_settings(home, data_root, **changes) -> PipelineSettings:
    base = dict(pipeline_name="kdem-test", home=str(home), data_root=str(data_root), preset="tiny",
                train_overrides=OVERRIDES, train_steps=2, code_fingerprint="tests", eval_trials=2, min_map=0.0, beam_mode="in_memory")
    base.update(changes)
    return PipelineSettings(**base)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from kdem_tf.data import synthetic

    root = tmp_path_factory.mktemp("data") / "sysu"
    synthetic.generate_sysu(str(root), identities=6, seed=0, image_size=(64, 32), images_per_camera=2,
                            progress=False)
    return str(root)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_data):
    """Runs A (unreachable threshold), B (reachable) and C (unchanged) in one pipeline home."""
    home = tmp_path_factory.mktemp("home")
    out = {}
    for name, min_map in (("A", 101.0), ("B", 0.0), ("C", 0.0)):
        settings = local_runner.run(tiny_settings(home, tiny_data, min_map=min_map))
        out[name] = {"settings": settings, "report": local_runner.run_report(settings),
                     "versions": _versions(settings.serving_model_dir)}
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


def test_first_run_not_blessed_with_unreachable_threshold(runs):
    report, settings = runs["A"]["report"], runs["A"]["settings"]
    assert _states(report, EXECUTED) == {n: "COMPLETE" for n in EXECUTED}
    with open(os.path.join(_output(report, "ReidEvaluator", "evaluation"), "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["blessed"] is False and "below the threshold" in metrics["reasons"][0]
    blessing = _output(report, "ReidEvaluator", "blessing")
    assert os.path.exists(os.path.join(blessing, "NOT_BLESSED"))
    assert _artifact(settings, blessing).custom_properties["blessed"].int_value == 0
    assert _artifact(settings, _output(report, "Pusher", "pushed_model")).custom_properties["pushed"].int_value == 0
    assert runs["A"]["versions"] == []
    assert os.path.exists(os.path.join(_output(report, "ReidGalleryIndex", "index"), "NOT_BUILT"))


def test_examples_have_identity_disjoint_splits(runs, tiny_data):
    from kdem_tf.data import datasets, input_pipeline, preprocess

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
        assert ids[split] == datasets.identities(planned[split])
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
    assert _states(report, ("ReidEvaluator", "Pusher", "ReidGalleryIndex")) == {
        "ReidEvaluator": "COMPLETE", "Pusher": "COMPLETE", "ReidGalleryIndex": "COMPLETE"}
    model = _output(report, "Trainer", "model")
    assert model == _output(runs["A"]["report"], "Trainer", "model")
    assert os.path.exists(os.path.join(model, "Format-Serving", "saved_model.pb"))
    run_dir = _output(report, "Trainer", "model_run")
    with open(os.path.join(run_dir, "run_info.json")) as f:
        assert json.load(f)["image_size"] == [64, 32]
    assert glob.glob(os.path.join(run_dir, "logs", "*tfevents*"))
    with open(os.path.join(run_dir, "train_summary.json")) as f:
        assert json.load(f)["steps"] == 2  # TrainArgs.num_steps
    with open(os.path.join(_output(report, "ReidEvaluator", "evaluation"), "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["blessed"] is True and metrics["baseline"] is None
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


def test_tfx_cli_create_and_run(runs, tiny_data, tmp_path):
    """`tfx pipeline create` + `tfx run create` on the same home: every component is cached."""
    settings = runs["C"]["settings"]
    env = dict(os.environ, LOCAL_HOME=str(tmp_path / "cli"), KDEM_PIPELINE_NAME=settings.pipeline_name,
               KDEM_PIPELINE_HOME=settings.home, KDEM_DATA_ROOT=settings.data_root, KDEM_PRESET="tiny",
               KDEM_TRAIN_STEPS="2", KDEM_EVAL_TRIALS="2", KDEM_MIN_MAP="0", KDEM_BEAM_MODE="in_memory",
               KDEM_TRAIN_OVERRIDES=";".join(OVERRIDES), KDEM_CODE_FINGERPRINT="tests")
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
    from kdem_tf.data import datasets

    root = tmp_path / "broken"
    shutil.copytree(tiny_data, root)
    train_ids = datasets.read_sysu_ids(str(root), "train") + datasets.read_sysu_ids(str(root), "val")
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
        assert _states(report, ("ReidExampleGen", "StatisticsGen", "ExampleValidator")) == {
            n: expected for n in ("ReidExampleGen", "StatisticsGen", "ExampleValidator")}
