"""One image contract from Beam to serving: the same file gives the same pixels and embeddings everywhere.

A synthetic SYSU-MM01 tree rendered at 96x48 (twice the model's 64x32: every stage must
downscale) goes through the real Beam writer; a random-init model gets a run folder with a
caffe contract (not the pre-contract fallback, so a stage that ignores the recorded contract
fails) and is exported as a SavedModel.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from kdem_tf.image_contract import NORMALIZATIONS, ImageContract
from tests.conftest import TEST_STAGE_BLOCKS
from kdem_tf.datasets import sysu as sysu_ds

RENDER_SIZE = (96, 48)
MODEL_SIZE = (64, 32)
EMBEDDING_ATOL = 1e-5
# PIL's LANCZOS (AGW's Image.ANTIALIAS) vs TF's antialiased lanczos3 on the same decoded pixels:
# PIL rounds to uint8 after each 1-D pass. Measured on these images: mean |Δ| 0.27, max 11 levels.
PIL_MEAN_TOLERANCE = 0.5
PIL_MAX_TOLERANCE = 16.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from kdem_tf.data import preprocess
    from kdem_tf.config import ModelConfig
    from kdem_tf.model.model import build_kdem_models
    from serving.export.saved_model import export_embedder

    base = tmp_path_factory.mktemp("parity")
    raw = sysu_ds.generate_synthetic(str(base / "raw"), identities=6, images_per_camera=2, image_size=RENDER_SIZE,
                                  seed=0, progress=False)
    tfrecords = str(base / "tfrecords")
    preprocess.run_preprocess(preprocess.plan_splits("sysu", raw), raw, tfrecords, num_shards=2,
                              pipeline_options=preprocess.local_pipeline_options([]))
    run = base / "run"
    run.mkdir()
    contract = ImageContract(MODEL_SIZE, "caffe")
    _, model = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=0.25, stage_blocks=TEST_STAGE_BLOCKS), 4, MODEL_SIZE)  # quarter width, 4 blocks: speed
    model.save(str(run / "inference_model.keras"))
    contract.save(str(run))
    (run / "run_info.json").write_text(json.dumps({"image_size": list(MODEL_SIZE), "dataset": "sysu",
                                                   "num_classes": 4, "image_contract": contract.to_dict()}))
    models = str(base / "models")
    export_embedder(str(run), models)
    return {"raw": raw, "tfrecords": tfrecords, "run": str(run), "models": models, "contract": contract}


def _records(tfrecords: str, split: str):
    from kdem_tf.data import input_pipeline
    return input_pipeline.load_split(tfrecords, split)


def test_served_bytes_equal_the_evaluation_embedding_of_the_tfrecord(world):
    """serving_default on the file's bytes == training-time evaluation (Keras, tf.data) on its TFRecord."""
    from kdem_tf.evaluation import records as record_evaluation
    from serving.export.embedder import Embedder
    from serving.export.run_folder import load_run

    model, _ = load_run(world["run"])
    paths, evaluated = record_evaluation.embed_keras(model, world["tfrecords"], "query", world["contract"])
    embedder = Embedder(world["models"])
    assert embedder.contract == world["contract"]
    files = [open(os.path.join(world["raw"], p), "rb").read() for p in paths]
    served = embedder.embed_bytes(files, ["infrared"] * len(files))
    assert served.shape == evaluated.shape and len(paths) >= 4
    assert np.abs(served - evaluated).max() <= EMBEDDING_ATOL
    # Not equal by construction: the other modality's stem gives other embeddings.
    assert np.abs(embedder.embed_bytes(files[:2], ["visible"] * 2) - evaluated[:2]).max() > 1e-3


def test_raw_folder_and_tfrecords_give_identical_metrics(world, tmp_path, capsys):
    from kdem_tf import evaluate

    metrics = {}
    for name, source in (("raw", ["--data-root", world["raw"]]), ("tfrecords", ["--tfrecords", world["tfrecords"]])):
        out = tmp_path / f"{name}.json"
        code = evaluate.main(["--dataset", "sysu", *source, "--model", world["models"], "--trials", "3",
                              "--output", str(out)])
        assert code == 0, capsys.readouterr().err
        metrics[name] = json.loads(out.read_text())
    for key in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "cmc", "per_trial", "gallery_sizes"):
        assert metrics["raw"][key] == metrics["tfrecords"][key], key
    # The TFX evaluator and training-time evaluation run the same protocol code.
    from kdem_tf.evaluation import EvalOptions
    from kdem_tf.evaluation import records as record_evaluation
    from kdem_tf.artifacts import resolve_version_dir
    pipeline = record_evaluation.evaluate_saved_model(resolve_version_dir(world["models"]), "sysu",
                                                      world["tfrecords"], EvalOptions(trials=3))
    assert pipeline["mAP"] == metrics["raw"]["mAP"] and pipeline["rank1"] == metrics["raw"]["rank1"]


def test_tfrecords_hold_originals_and_decode_to_the_reference_resize(world):
    """#17 item 5: the pixels every stage decodes from a TFRecord are the reference resize of the file."""
    from kdem_tf.data import input_pipeline

    contract = world["contract"]
    split = _records(world["tfrecords"], "gallery")
    checked = 0
    for stored, path in list(zip(split.images, split.paths))[:6]:
        with open(os.path.join(world["raw"], path), "rb") as f:
            original = f.read()
        assert stored == original  # no resize, no re-encoding in Beam
        decoded = contract.decode(tf.constant(stored)).numpy()
        # Independent TF reference: accurate-IDCT JPEG decode, antialiased lanczos3, clipped.
        pixels = tf.io.decode_jpeg(original, channels=3, dct_method="INTEGER_ACCURATE")
        assert pixels.shape[:2] == RENDER_SIZE
        reference = tf.clip_by_value(tf.image.resize(pixels, MODEL_SIZE, "lanczos3", antialias=True), 0, 255)
        np.testing.assert_allclose(decoded, reference.numpy(), atol=1e-3)
        # AGW's path: PIL decode + LANCZOS resize (uint8).
        pil = np.asarray(Image.open(os.path.join(world["raw"], path)).convert("RGB").resize(
            (MODEL_SIZE[1], MODEL_SIZE[0]), Image.LANCZOS), np.float32)
        difference = np.abs(decoded - pil)
        assert difference.mean() <= PIL_MEAN_TOLERANCE and difference.max() <= PIL_MAX_TOLERANCE
        # A bilinear resize without antialiasing (the old Beam/SavedModel path) is farther from PIL.
        bilinear = tf.image.resize(pixels, MODEL_SIZE, "bilinear").numpy()
        assert np.abs(bilinear - pil).mean() > 2 * difference.mean()
        checked += 1
    assert checked == 6
    # The evaluation pipeline's batches are those pixels, normalised by the contract (caffe: BGR - mean).
    batch = next(iter(input_pipeline.eval_dataset(world["tfrecords"], "gallery", contract, batch_size=2)))
    first = contract.decode(tf.constant(_stored(world["tfrecords"], "gallery", batch["path"][0]))).numpy()
    caffe = NORMALIZATIONS["caffe"]
    np.testing.assert_allclose(batch["image"][0].numpy(), first[..., ::-1] - np.array(caffe["mean"]), atol=1e-3)


def _stored(tfrecords: str, split: str, path) -> bytes:
    arrays = _records(tfrecords, split)
    return arrays.images[list(arrays.paths).index(path.numpy().decode())]


def test_train_pipeline_resizes_originals_with_the_contract(world):
    from kdem_tf.data import input_pipeline

    split = _records(world["tfrecords"], "train")
    dataset, _ = input_pipeline.train_dataset(split, MODEL_SIZE, num_identities=2, num_instances=2, erasing=0.0,
                                              contract=world["contract"])
    inputs, _ = next(iter(dataset))
    assert inputs["visible"].shape == (4, *MODEL_SIZE, 3)
    # caffe input: BGR minus the mean, not /255 (a torchvision-normalised batch would sit within ±3)
    assert float(tf.reduce_max(tf.abs(inputs["visible"]))) > 50.0
