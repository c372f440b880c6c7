"""The TFX pipeline end to end on the two newer dataset kinds: a synthetic LLCM-layout folder and a
CSV manifest of "one's own cameras" (tiny sizes, LocalDagRunner, in-memory Beam, 1 training step).

Each run must go through every component, bless (threshold 0), push a version and index its
gallery; the evaluator's numbers must equal `kdem_tf.evaluate --tfrecords` on the same Examples
with the pushed model (the one protocol implementation), and the Examples must hold the dataset's
own splits.
"""
import json
import os

import pytest

from pipeline import local_runner
from pipeline.configs import PipelineSettings
from tests.pipeline.conftest import OVERRIDES
from kdem_tf.datasets import sysu as sysu_ds
from kdem_tf.datasets import llcm as llcm_ds
from kdem_tf import datasets

NODES = ("ImportSchemaGen", "ReidExampleGen", "StatisticsGen", "ExampleValidator", "ReidDataCheck", "Trainer",
         "ReidEvaluator", "Pusher", "ReidGalleryIndex")


def _settings(home, dataset, data_root) -> PipelineSettings:
    return PipelineSettings(pipeline_name=f"kdem-{dataset}", home=str(home), dataset=dataset,
                            data_root=str(data_root), preset="tiny", train_overrides=OVERRIDES, train_steps=1,
                            code_fingerprint="tests",
                            eval_trials=2, min_map=0.0, beam_mode="in_memory")


def _manifest(folder) -> str:
    """Own cameras: a lobby (visible, cameras 1 and 3) and a gate (infrared, camera 2), 6 people."""

    raw = folder / "render"
    sysu_ds.generate_synthetic(str(raw), identities=6, seed=5, image_size=(64, 32), images_per_camera=2,
                            progress=False)
    lines = []
    for cam_folder, camera, modality in (("cam1", 1, "visible"), ("cam2", 3, "visible"), ("cam3", 2, "infrared")):
        for pid_folder in sorted(os.listdir(raw / cam_folder)):
            pid = int(pid_folder)
            for i, name in enumerate(sorted(os.listdir(raw / cam_folder / pid_folder))):
                split = "train" if pid <= 3 else ("query" if modality == "infrared" else "gallery")
                rel = f"{cam_folder}/{pid_folder}/{name}"
                lines.append(f"render/{rel},{pid},{camera},{modality},{split}")
    path = folder / "manifest.csv"
    path.write_text("path,person_id,camera,modality,split\n" + "\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module", params=["llcm", "manifest"])
def dataset_run(request, tmp_path_factory):
    dataset = request.param
    base = tmp_path_factory.mktemp(dataset)
    if dataset == "llcm":
        data_root = llcm_ds.generate_synthetic(str(base / "LLCM"), identities=6, images_per_camera=1,
                                                 image_size=(64, 32), progress=False)
    else:
        data_root = _manifest(base)
    settings = local_runner.run(local_runner.resolve_settings(_settings(base / "home", dataset, data_root)))
    return dataset, settings, local_runner.run_report(settings)


def test_pipeline_runs_end_to_end_and_pushes(dataset_run):
    from kdem_tf.data import schema

    dataset, settings, report = dataset_run
    assert {n: report[n]["state"] for n in NODES} == {n: "COMPLETE" for n in NODES}
    examples = report["ReidExampleGen"]["outputs"]["examples"][0]
    for split in datasets.get(dataset).split_names():
        assert os.path.isdir(os.path.join(examples, f"Split-{split}")), split
    with open(os.path.join(report["ReidDataCheck"]["outputs"]["report"][0], "data_report.json")) as f:
        assert json.load(f)["problems"] == []
    from kdem_tf.data import input_pipeline

    versions = [v for v in os.listdir(settings.serving_model_dir) if v.isdigit()]
    assert len(versions) == 1
    with open(os.path.join(settings.index_base_dir, versions[0], "manifest.json")) as f:
        count = json.load(f)["count"]
    assert count == len(input_pipeline.load_split(examples, settings.gallery_split))


def test_evaluator_equals_evaluate_tfrecords(dataset_run, tmp_path):
    from kdem_tf import evaluate

    dataset, settings, report = dataset_run
    with open(os.path.join(report["ReidEvaluator"]["outputs"]["evaluation"][0], "metrics.json")) as f:
        gate = json.load(f)
    assert gate["blessed"] is True
    examples = report["ReidExampleGen"]["outputs"]["examples"][0]
    version = sorted(v for v in os.listdir(settings.serving_model_dir) if v.isdigit())[-1]
    out = tmp_path / "metrics.json"
    argv = ["--dataset", dataset, "--tfrecords", examples, "--model",
            os.path.join(settings.serving_model_dir, version), "--output", str(out)]
    if dataset != "manifest":
        argv += ["--trials", "2"]
    assert evaluate.main(argv) == 0
    cli = json.loads(out.read_text())
    current = gate["current"]
    for key in ("rank1", "mAP", "mINP"):
        assert current[key] == pytest.approx(cli[key], abs=1e-9), key
