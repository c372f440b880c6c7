"""`python -m kdem_tf.visualize` end to end: a tiny trained run folder (classifier from its checkpoint), the
SavedModel exported from it, and a SavedModel that names no run folder."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from kdem_tf import visualize
from tests.test_evaluate_cli import check_png
from tests.training.conftest import train_args


@pytest.fixture(scope="module")
def tiny_run(tiny_tfrecords, tmp_path_factory):
    """(run folder of 4 tiny training steps, the raw SYSU folder it was preprocessed from)."""
    from kdem_tf import train

    run_dir = str(tmp_path_factory.mktemp("vis") / "run")
    assert train.main(train_args(tiny_tfrecords, run_dir, "--quiet")) == 0
    return run_dir, os.path.join(os.path.dirname(tiny_tfrecords), "raw")


def test_classifier_comes_from_the_latest_checkpoint(tiny_run):
    import keras
    import tensorflow as tf

    import kdem_tf.model.model  # noqa: F401
    from kdem_tf.training.checkpointing import latest_checkpoint

    run_dir, _ = tiny_run
    saved = keras.saving.load_model(os.path.join(run_dir, "inference_model.keras"), compile=False)
    model, kernel = visualize.restore_run_models(run_dir, saved)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), saved.get_weights()))
    with open(os.path.join(run_dir, "run_info.json")) as f:
        num_classes = json.load(f)["num_classes"]
    assert kernel.shape == (int(model.output["embedding"].shape[-1]), num_classes)
    prefix = latest_checkpoint(os.path.join(run_dir, "checkpoints"))["prefix"]
    reader = tf.train.load_checkpoint(prefix)
    stored = [reader.get_tensor(name) for name, shape in tf.train.list_variables(prefix)
              if list(shape) == list(kernel.shape)]  # the kernel, and the optimizer's momentum of it
    assert sum(np.array_equal(value, kernel) for value in stored) == 1
    saved.get_layer("bn_neck").moving_mean.assign(saved.get_layer("bn_neck").moving_mean + 1.0)
    with pytest.raises(visualize.VisualizeError, match="its weights differ from .*inference_model.keras"):
        visualize.restore_run_models(run_dir, saved)


def test_maps_of_a_run_folder_and_of_its_export(tiny_run, tmp_path, capsys):
    from serving.export.saved_model import export_embedder

    run_dir, raw = tiny_run
    out = tmp_path / "maps"
    argv = ["--dataset", "sysu", "--data-root", raw, "--out", str(out), "--queries", "2", "--top-k", "2"]
    assert visualize.main(["--model", run_dir, *argv]) == 0
    check_png(out / "activation_maps.png")
    version = export_embedder(run_dir, str(tmp_path / "models"))
    os.remove(out / "activation_maps.png")
    assert visualize.main(["--model", version, *argv]) == 0
    assert "max |Δ embedding|" not in capsys.readouterr().err
    check_png(out / "activation_maps.png")
    info_path = os.path.join(version, "assets.extra", "kdem_info.json")
    with open(info_path) as f:
        info = json.load(f)
    info.pop("run_dir")
    with open(info_path, "w") as f:
        json.dump(info, f)
    assert visualize.main(["--model", version, *argv]) == 2
    assert "a SavedModel exposes embeddings only" in capsys.readouterr().err
    assert visualize.main(["--model", str(tmp_path), *argv]) == 2
    assert "neither a run folder" in capsys.readouterr().err
