"""Exports the KDEM inference model as a TF Serving embedder SavedModel.

    python -m serving.export --run RUN_DIR --out MODEL_BASE [--version N]

writes `MODEL_BASE/<version>/` (TF Serving's layout) with two signatures:

- `serving_default`: `image_bytes` string [N] (JPEG, PNG or BMP) and `modality`
  string [N] ("visible" or "infrared") -> `embedding` float32 [N, D], L2-normalised.
  Decoding, resizing and ImageNet normalisation run inside the graph with the very
  functions of the evaluation input path (`kdem_tf.data.input_pipeline`).
- `embed_images`: `images` float32 [N, H, W, 3] in 0..255 and `modality` -> `embedding`.

Only stock TensorFlow ops are used, so the stock `tensorflow_model_server` runs it.
A version folder appears atomically: the SavedModel is written into a hidden temp
folder beside it (TF Serving only sees all-digit folder names) and renamed.
`assets.extra/kdem_info.json` records the image size and embedding dimension.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from typing import Optional, Sequence, Tuple, Union

import keras
import tensorflow as tf

from kdem_tf.data import schema
from kdem_tf.data.input_pipeline import decode, normalize

INFO_FILE = "kdem_info.json"
SERVING_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "embed_images"


def load_run(run_dir: str) -> Tuple[keras.Model, dict]:
    """Loads `RUN_DIR/inference_model.keras` and `RUN_DIR/run_info.json`.

    Args:
        run_dir: a training run folder written by `kdem_tf.train`.

    Returns:
        (inference_model, run_info).
    """
    info_path = os.path.join(run_dir, "run_info.json")
    model_path = os.path.join(run_dir, "inference_model.keras")
    for path in (info_path, model_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: missing (is {run_dir} a training run folder?)")
    with open(info_path) as f:
        run_info = json.load(f)
    if "image_size" not in run_info:
        raise ValueError(f"{info_path}: no 'image_size'")
    # The custom layers register themselves on import of the model module.
    import kdem_tf.model.model  # noqa: F401
    model = keras.saving.load_model(model_path, compile=False)
    return model, run_info


def modality_ids(modality: tf.Tensor) -> tf.Tensor:
    """string [N] "visible"/"infrared" -> int32 [N] 0/1; any other value fails with InvalidArgument."""
    is_visible = tf.equal(modality, schema.VISIBLE)
    is_infrared = tf.equal(modality, schema.INFRARED)
    valid = tf.reduce_all(tf.logical_or(is_visible, is_infrared))
    check = tf.debugging.Assert(valid, ["modality must be 'visible' or 'infrared'"])
    with tf.control_dependencies([check]):
        return tf.cast(is_infrared, tf.int32)


def export_saved_model(inference_model: keras.Model, image_size: Sequence[int], export_dir: str,
                       extra_info: Optional[dict] = None) -> str:
    """Writes the embedder SavedModel straight into `export_dir` (no versioning).

    Used as is by the TFX Trainer (its serving_model_dir); `export_embedder` adds
    TF Serving's version folders and atomicity around it.

    Args:
        inference_model: the Keras inference model of `build_kdem_models`.
        image_size: (H, W) the model was trained at.
        export_dir: target folder (must not exist or be empty).
        extra_info: more keys for `assets.extra/kdem_info.json`.

    Returns:
        export_dir.
    """
    height, width = (int(v) for v in image_size)
    embedding_dim = int(inference_model.output["embedding"].shape[-1])

    def embed_images(images, modality):
        outputs = inference_model({"image": normalize(images), "modality": modality_ids(modality)},
                                  training=False)
        return {"embedding": outputs["embedding"]}

    def serve_bytes(image_bytes, modality):
        # One decode per image: the evaluation path's decode (+ bilinear resize when needed).
        images = tf.map_fn(lambda b: decode(b, (height, width)), image_bytes,
                           fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))
        return embed_images(images, modality)

    archive = keras.export.ExportArchive()
    archive.track(inference_model)
    archive.add_endpoint(SERVING_SIGNATURE, serve_bytes, input_signature=[
        tf.TensorSpec([None], tf.string, name="image_bytes"),
        tf.TensorSpec([None], tf.string, name="modality")])
    archive.add_endpoint(IMAGES_SIGNATURE, embed_images, input_signature=[
        tf.TensorSpec([None, height, width, 3], tf.float32, name="images"),
        tf.TensorSpec([None], tf.string, name="modality")])
    archive.write_out(export_dir, verbose=False)

    info = {"image_size": [height, width], "embedding_dim": embedding_dim,
            "signatures": [SERVING_SIGNATURE, IMAGES_SIGNATURE], "exported_at": time.time()}
    info.update(extra_info or {})
    os.makedirs(os.path.join(export_dir, "assets.extra"), exist_ok=True)
    with open(os.path.join(export_dir, "assets.extra", INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return export_dir


def list_versions(model_base: str) -> list:
    """Sorted version numbers under a TF Serving base path (all-digit folder names only)."""
    if not os.path.isdir(model_base):
        return []
    return sorted(int(name) for name in os.listdir(model_base)
                  if name.isdigit() and os.path.isdir(os.path.join(model_base, name)))


def read_info(version_dir: str) -> dict:
    """The `assets.extra/kdem_info.json` of an exported version ({} when absent)."""
    path = os.path.join(version_dir, "assets.extra", INFO_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def publish_dir(write, model_base: str, version: Optional[int] = None) -> str:
    """Runs write(temp_dir) in a hidden temp folder under `model_base`, renames it to the version.

    Args:
        write: callable writing a complete SavedModel into the folder it is given.
        model_base: TF Serving base path (created if absent).
        version: version number; default max existing + 1 (1 for an empty base).

    Returns:
        the final version folder.
    """
    os.makedirs(model_base, exist_ok=True)
    if version is None:
        version = max(list_versions(model_base), default=0) + 1
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final}: version {version} already exists")
    # Same file system as the target, so the rename is atomic; the name is not all digits,
    # so neither TF Serving nor serving.server treats it as a version.
    temp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_base)
    try:
        export_dir = os.path.join(temp, "model")
        write(export_dir)
        os.rename(export_dir, final)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return final


def export_embedder(run_dir_or_keras_model: Union[str, keras.Model], model_base: str,
                    version: Optional[int] = None, image_size: Optional[Sequence[int]] = None) -> str:
    """Exports a run's inference model as `model_base/<version>/`, atomically.

    Args:
        run_dir_or_keras_model: a training run folder, or the Keras inference model itself
            (then `image_size` defaults to the model's input size).
        model_base: TF Serving base path.
        version: version number; default max existing + 1.
        image_size: (H, W); default the run's `image_size`.

    Returns:
        the written version folder.
    """
    extra = {}
    if isinstance(run_dir_or_keras_model, str):
        model, run_info = load_run(run_dir_or_keras_model)
        image_size = image_size or run_info["image_size"]
        extra = {k: run_info[k] for k in ("dataset", "num_classes") if k in run_info}
        extra["run_dir"] = os.path.abspath(run_dir_or_keras_model)
    else:
        model = run_dir_or_keras_model
        image_size = image_size or tuple(model.input["image"].shape[1:3])
    return publish_dir(lambda d: export_saved_model(model, image_size, d, extra), model_base, version)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="training run folder (inference_model.keras, run_info.json)")
    parser.add_argument("--out", help="TF Serving model base path (required unless --tflite)")
    parser.add_argument("--version", type=int, default=None, help="default: max existing + 1")
    from serving import tflite_export
    tflite_export.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.tflite:
        raise SystemExit(tflite_export.run_cli(args))
    if not args.out:
        parser.error("--out (or --tflite) is required")
    path = export_embedder(args.run, args.out, args.version)
    info = read_info(path)
    print(f"exported {path} (image size {info['image_size']}, embedding dim {info['embedding_dim']})")


if __name__ == "__main__":
    main()
