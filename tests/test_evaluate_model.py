"""`kdem_tf.evaluate --model`: the per-trial `{trial}` model is the one each trial uses.

Two real SavedModels with the embedder contract but different embeddings, one per RegDB trial.
The metrics of `--model run_t{trial}` must equal those of `--features` holding each trial's
own model's embeddings, and differ from those of the other trial's model (so a `{trial}`
that always picked one model, or swapped them, fails).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kdem_tf import evaluate as cli
from tests.test_evaluation import make_regdb
from kdem_tf.evaluation.embedding import embed_images

# A colour mixing per model: model 1 ranks by (R, G, B), model 2 by another projection.
MIXINGS = {1: np.eye(3, dtype=np.float32),
           2: np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -4.0]], np.float32)}


def build_embedder(path: Path, mixing: np.ndarray) -> None:
    """serving_default(image_bytes, modality) -> embedding = [mean RGB @ mixing, 10 * is_infrared]."""
    import tensorflow as tf

    class Embedder(tf.Module):
        def __init__(self):
            super().__init__()
            self.mixing = tf.constant(mixing)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
                                      tf.TensorSpec([None], tf.string, name="modality")])
        def serve(self, image_bytes, modality):
            def one(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.reduce_mean(tf.cast(image, tf.float32), axis=[0, 1])
            rgb = tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([3], tf.float32))
            flag = tf.cast(tf.equal(modality, "infrared"), tf.float32)[:, None] * 10.0
            return {"embedding": tf.concat([tf.matmul(rgb, self.mixing), flag], axis=1)}

    module = Embedder()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _run(argv, capsys) -> dict:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(Path(argv[argv.index("--output") + 1]).read_text())


def test_trial_placeholder_picks_each_trials_own_model(tmp_path, capsys):
    root = make_regdb(tmp_path / "RegDB", ids=12, per_id=2, trials=(1, 2))
    for trial, mixing in MIXINGS.items():
        build_embedder(tmp_path / f"run_t{trial}" / "export" / "1", mixing)
    by_model = _run(["--dataset", "regdb", "--data-root", root, "--model", tmp_path / "run_t{trial}",
                     "--trials", 2, "--output", tmp_path / "model.json"], capsys)

    # The same trials from features: trial t embedded by model t, and, crossed, by the other model.
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*.bmp"))
    records = [(p, "visible" if p.startswith("Visible/") else "infrared") for p in paths]
    embeddings = {t: embed_images(str(tmp_path / f"run_t{t}"), str(root), records) for t in MIXINGS}
    metrics = {}
    for name, chosen in (("own", {1: 1, 2: 2}), ("crossed", {1: 2, 2: 1})):
        arrays = {}
        for trial, model in chosen.items():
            arrays[f"paths_trial{trial}"] = np.array(paths)
            arrays[f"features_trial{trial}"] = embeddings[model]
        np.savez(tmp_path / f"{name}.npz", **arrays)
        metrics[name] = _run(["--dataset", "regdb", "--data-root", root, "--features", tmp_path / f"{name}.npz",
                              "--trials", 2, "--output", tmp_path / f"{name}.json"], capsys)
    for trial in range(2):
        for key in ("rank1", "mAP", "mINP"):
            assert by_model["per_trial"][trial][key] == pytest.approx(metrics["own"]["per_trial"][trial][key],
                                                                      abs=1e-9), (trial, key)
    # The two models do rank differently on these trials: a wrong pick would show.
    assert any(metrics["own"]["per_trial"][t]["mAP"] != pytest.approx(metrics["crossed"]["per_trial"][t]["mAP"],
                                                                      abs=1e-6) for t in range(2))
