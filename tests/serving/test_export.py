"""Embedder export: same embeddings as Keras, stock ops only, atomic TF Serving versions."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TEST_STAGE_BLOCKS
from tests.serving.conftest import EMBEDDING_DIM, IMAGE_SIZE, MODEL_WIDTH, REPO, png_bytes

# Same graph ops on the same CPU: the SavedModel and Keras differ by float rounding only.
EMBEDDING_ATOL = 1e-5


def test_export_layout_and_info(model_base):
    from kdem_tf.artifacts import list_versions
    from serving.export.saved_model import read_info
    assert list_versions(model_base) == [1]
    version_dir = os.path.join(model_base, "1")
    assert os.path.exists(os.path.join(version_dir, "saved_model.pb"))
    info = read_info(version_dir)
    assert info["image_size"] == list(IMAGE_SIZE) and info["embedding_dim"] == EMBEDDING_DIM
    assert info["dataset"] == "sysu"
    # The fixture's run folder predates contracts (run_info.json holds only a size): torchvision.
    assert info["image_contract"]["image_size"] == list(IMAGE_SIZE)
    assert info["image_contract"]["normalization"] == "torchvision"
    assert info["image_contract"]["resize"] == {"method": "lanczos3", "antialias": True}


def test_export_bakes_the_run_contract_into_graph_and_info(run_dir, tmp_path):
    """A run folder's image_contract.json (caffe here) is what the export records and computes."""
    import shutil

    from kdem_tf.image_contract import ImageContract
    from serving.export.embedder import Embedder
    from serving.export.run_folder import load_run
    from serving.export.saved_model import export_embedder, read_contract
    run = str(tmp_path / "run")
    shutil.copytree(run_dir, run)
    contract = ImageContract(IMAGE_SIZE, "caffe")
    contract.save(run)
    base = str(tmp_path / "models")
    version_dir = export_embedder(run, base)
    assert read_contract(version_dir) == contract
    model, _ = load_run(run)
    image = png_bytes(np.random.default_rng(3).integers(0, 256, (96, 40, 3)))  # must be downscaled
    # BGR, mean-subtracted pixels of the contract's antialiased resize: computed here, not by the export
    pixels = tf.image.resize(tf.io.decode_png(image, channels=3), IMAGE_SIZE, "lanczos3", antialias=True)
    caffe = tf.clip_by_value(pixels, 0, 255)[..., ::-1] - tf.constant([103.939, 116.779, 123.68])
    expected = model({"image": caffe[None], "modality": tf.constant([1])}, training=False)["embedding"].numpy()
    embedder = Embedder(base)
    assert embedder.contract == contract
    np.testing.assert_allclose(embedder.embed_bytes([image], ["infrared"]), expected, atol=EMBEDDING_ATOL)


def test_reloaded_embeddings_equal_keras(run_dir, embedder):
    from serving.export.run_folder import load_run
    model, _ = load_run(run_dir)
    contract = embedder.contract
    rng = np.random.default_rng(0)
    # One image at the model size, one that the graph must resize.
    images = [png_bytes(rng.integers(0, 256, (64, 32, 3))), png_bytes(rng.integers(0, 256, (80, 48, 3)))]
    modalities = ["visible", "infrared"]
    served = embedder.embed_bytes(images, modalities)
    batch = tf.stack([contract.preprocess(tf.constant(b)) for b in images])
    expected = model({"image": batch, "modality": tf.constant([0, 1])}, training=False)["embedding"].numpy()
    assert served.shape == (2, EMBEDDING_DIM)
    np.testing.assert_allclose(served, expected, atol=EMBEDDING_ATOL)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    # The float-image signature gives the same embeddings.
    floats = np.stack([embedder.decode(b) for b in images])
    np.testing.assert_allclose(embedder.embed_images(floats, modalities), expected, atol=EMBEDDING_ATOL)
    # The modality selects the stem: the same image embeds differently per modality.
    assert not np.allclose(embedder.embed_bytes(images[:1], ["infrared"]), served[:1], atol=1e-4)


def test_unknown_modality_is_invalid_argument(embedder):
    image = png_bytes(np.zeros((64, 32, 3)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="modality"):
        embedder.embed_bytes([image], ["thermal"])


_OPS_SCRIPT = r"""
import json, sys
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry
path = sys.argv[1]
saved_model = saved_model_pb2.SavedModel()
with open(path + "/saved_model.pb", "rb") as f:
    saved_model.ParseFromString(f.read())
ops, functions = set(), set()
for meta_graph in saved_model.meta_graphs:
    ops |= {node.op for node in meta_graph.graph_def.node}
    for function in meta_graph.graph_def.library.function:
        functions.add(function.signature.name)
        ops |= {node.op for node in function.node_def}
missing = sorted(op for op in ops - functions if op_def_registry.get(op) is None)
loaded = tf.saved_model.load(path)
with open(sys.argv[2], "rb") as f:
    image = f.read()
out = loaded.signatures["serving_default"](image_bytes=tf.constant([image]),
                                          modality=tf.constant(["infrared"]))["embedding"]
print(json.dumps({"ops": len(ops), "missing": missing, "shape": out.shape.as_list(),
                  "modules": sorted(m for m in ("keras", "scann", "kdem_tf", "serving") if m in sys.modules)}))
"""


def _op_check(version_dir, image_path: str) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", _OPS_SCRIPT, version_dir, image_path],
                            capture_output=True, text=True, env=env, cwd="/", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_only_stock_ops_in_a_fresh_tensorflow(model_base, tmp_path):
    image_path = tmp_path / "query.png"
    image_path.write_bytes(png_bytes(np.full((64, 32, 3), 128)))
    report = _op_check(os.path.join(model_base, "1"), str(image_path))
    assert report["missing"] == [], report
    assert report["ops"] > 20
    assert report["shape"] == [1, EMBEDDING_DIM]
    assert "scann" not in report["modules"] and "kdem_tf" not in report["modules"]


def test_publish_is_atomic_and_numbered(tmp_path):
    from kdem_tf.artifacts import list_versions, publish_version, resolve_version_dir
    base = str(tmp_path / "base")

    def write(export_dir):
        os.makedirs(export_dir)
        open(os.path.join(export_dir, "saved_model.pb"), "wb").close()

    assert publish_version(write, base).endswith(os.sep + "1")
    # A leftover temp folder of a crashed export is never a version.
    os.makedirs(os.path.join(base, ".tmp-2-crashed", "model"))
    open(os.path.join(base, ".tmp-2-crashed", "model", "saved_model.pb"), "wb").close()
    assert list_versions(base) == [1]
    assert publish_version(write, base).endswith(os.sep + "2")
    assert publish_version(write, base, version=7).endswith(os.sep + "7")
    assert list_versions(base) == [1, 2, 7]
    assert resolve_version_dir(base) == os.path.join(base, "7")
    with pytest.raises(FileExistsError):
        publish_version(write, base, version=2)

    def crash(export_dir):
        os.makedirs(export_dir)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        publish_version(crash, base)
    assert list_versions(base) == [1, 2, 7]
    assert sorted(os.listdir(base)) == [".tmp-2-crashed", "1", "2", "7"]


def test_a_bfloat16_trained_run_exports_float32(tmp_path):
    """A run trained under mixed_bfloat16 saves that policy in every layer; the export computes in
    float32 unless asked (and records it), with the same weights: embeddings agree to bf16 rounding."""
    import keras

    from kdem_tf.config import ModelConfig

    from kdem_tf.model.model import build_kdem_models
    from serving.export.embedder import Embedder
    from serving.export.run_folder import compute_dtype_of
    from serving.export.saved_model import export_embedder, read_info

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        _, model = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=MODEL_WIDTH, stage_blocks=TEST_STAGE_BLOCKS), 4, IMAGE_SIZE)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert compute_dtype_of(model) == "bfloat16"
    run = tmp_path / "run"
    run.mkdir()
    model.save(str(run / "inference_model.keras"))
    (run / "run_info.json").write_text(json.dumps({"image_size": list(IMAGE_SIZE), "embedding_dim": EMBEDDING_DIM}))
    version_dir = export_embedder(str(run), str(tmp_path / "models"))
    assert read_info(version_dir)["compute_dtype"] == "float32"
    pixels = np.random.default_rng(4).integers(0, 256, (2, *IMAGE_SIZE, 3)).astype(np.float32)
    served = Embedder(version_dir).embed_images(pixels, ["visible", "infrared"])
    x = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    bf16 = model({"image": tf.constant(x, tf.float32), "modality": tf.constant([0, 1])}, training=False)
    cosine = np.sum(served * bf16["embedding"].numpy(), axis=1)
    assert np.all(cosine > 0.999) and np.abs(served - bf16["embedding"].numpy()).max() > 0  # float32 ran
