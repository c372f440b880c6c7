"""Exports the KDEM inference model as a TF Serving embedder SavedModel.

    python -m serving.export --run RUN_DIR --out MODEL_BASE [--version N]     (serving/export/cli.py)

writes `MODEL_BASE/<version>/` (TF Serving's layout) with four signatures:

- `serving_default`: `image_bytes` string [N] (JPEG, PNG or BMP) and `modality`
  string [N] ("visible" or "infrared") -> `embedding` float32 [N, D], L2-normalised.
  Decoding, the antialiased resize and the normalisation run inside the graph with the
  run's image contract (`kdem_tf.image_contract`): the very functions of training and
  evaluation, with the size and normalisation the model was trained with.
- `embed_images`: `images` float32 [N, H, W, 3] RGB in 0..255 (already at the contract's
  size, e.g. `ImageContract.decode`) and `modality` -> `embedding`.
- `serving_flip` / `embed_images_flip`: the same inputs as the two above -> the flip-averaged
  `embedding` L2(e(x) + e(mirror(x))) of flip test-time augmentation (`kdem_tf.tta`).

Only stock TensorFlow ops are used, so the stock `tensorflow_model_server` runs it.
A version folder appears atomically (`kdem_tf.artifacts.publish_version`): the SavedModel is
written into a hidden temporary folder beside it (TF Serving only sees all-digit folder names)
and renamed. The signature and file names are `kdem_tf.artifacts`'.
`assets.extra/kdem_info.json` records the image contract (`image_contract`), the image
size and the embedding dimension; `read_contract` reads it back. With
`--match-threshold-from metrics.json [--fmr 1e-3]` it also records `match_threshold`: the
same-person threshold `kdem_tf.evaluate` calibrated at that false-match rate, with its
provenance (`kdem_tf.evaluation.match_threshold.threshold_record`).
`assets.extra/tf_serving_warmup_requests` holds TF Serving's warm-up records (serving.export.warmup).
"""
from __future__ import annotations

import json
import os
import time
from typing import Optional, Sequence, Union

import keras
import tensorflow as tf

from kdem_tf import artifacts
from kdem_tf import tta
from kdem_tf.artifacts import (ASSETS_EXTRA_DIR, FLIP_IMAGES_SIGNATURE, FLIP_SIGNATURE, IMAGES_SIGNATURE,
                               KDEM_INFO_FILE, SERVING_SIGNATURE)
from kdem_tf.data import schema
from kdem_tf.image_contract import ImageContract, as_contract
from serving.export.run_folder import compute_dtype_of, load_run, run_contract
from serving.export.warmup import write_warmup_file


def modality_ids(modality: tf.Tensor) -> tf.Tensor:
    """string [N] "visible"/"infrared" -> int32 [N] (the contract's MODALITY_INDEX); any other value
    fails with InvalidArgument."""
    known = tf.stack([tf.equal(modality, name) for name in schema.MODALITIES], axis=-1)
    valid = tf.reduce_all(tf.reduce_any(known, axis=-1))
    check = tf.debugging.Assert(valid, [f"modality must be one of {list(schema.MODALITIES)}"])
    with tf.control_dependencies([check]):
        return tf.cast(tf.argmax(tf.cast(known, tf.int32), axis=-1), tf.int32)


def export_saved_model(inference_model: keras.Model, image_size: Union[ImageContract, Sequence[int]],
                       export_dir: str, extra_info: Optional[dict] = None) -> str:
    """Writes the embedder SavedModel straight into `export_dir` (no versioning).

    Used as is by the TFX Trainer (its serving_model_dir); `export_embedder` adds
    TF Serving's version folders and atomicity around it.

    Args:
        inference_model: the Keras inference model of `build_kdem_models`.
        image_size: the run's ImageContract (`run_contract`); a bare (H, W) means the
            pre-contract torchvision normalisation (`image_contract.as_contract`).
        export_dir: target folder (must not exist or be empty).
        extra_info: more keys for `assets.extra/kdem_info.json`.

    Returns:
        export_dir.
    """
    contract = as_contract(image_size)
    height, width = contract.image_size
    model_size = tuple(inference_model.input["image"].shape[1:3])
    if None not in model_size and model_size != contract.image_size:
        raise ValueError(f"{export_dir}: the model takes {model_size[0]}x{model_size[1]} images but the image "
                         f"contract says {height}x{width}")
    embedding_dim = int(inference_model.output["embedding"].shape[-1])

    images_spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="images")
    modality_spec = tf.TensorSpec([None], tf.string, name="modality")

    # The one traced call of the model: the four endpoints call this function (a call op in their
    # graphs, not a retrace), so the SavedModel holds the network's graph once and saves in a
    # fraction of the time (six traces of the model before, the flip endpoints taking two each).
    @tf.function(input_signature=[images_spec, modality_spec], autograph=False)
    def embed_images(images, modality):
        outputs = inference_model({"image": contract.normalize(images), "modality": modality_ids(modality)},
                                  training=False)
        return {"embedding": outputs["embedding"]}

    def decode(image_bytes):
        # One decode per image: the contract's decode + antialiased resize, as in training/evaluation.
        return tf.map_fn(contract.decode, image_bytes, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32))

    def serve_bytes(image_bytes, modality):
        return embed_images(decode(image_bytes), modality)

    def embed_images_flip(images, modality):
        # The images and their mirrors in one batch (inference is per image: the same numbers).
        count = tf.shape(images)[0]
        both = embed_images(tf.concat([images, tta.tf_flip_images(images)], axis=0),
                            tf.concat([modality, modality], axis=0))["embedding"]
        return {"embedding": tta.tf_combine_flip(both[:count], both[count:])}

    def serve_bytes_flip(image_bytes, modality):
        return embed_images_flip(decode(image_bytes), modality)

    bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    # name → (function, its first input); every endpoint's second input is the modality. Flip test-time
    # augmentation (kdem_tf.tta): the same inputs, flip-averaged embeddings.
    endpoints = {SERVING_SIGNATURE: (serve_bytes, bytes_spec), IMAGES_SIGNATURE: (embed_images, images_spec),
                 FLIP_SIGNATURE: (serve_bytes_flip, bytes_spec),
                 FLIP_IMAGES_SIGNATURE: (embed_images_flip, images_spec)}
    archive = keras.export.ExportArchive()
    archive.track(inference_model)
    for name, (function, first_input) in endpoints.items():
        archive.add_endpoint(name, function, input_signature=[first_input, modality_spec])
    archive.write_out(export_dir, verbose=False)

    info = {"image_size": [height, width], "image_contract": contract.to_dict(), "embedding_dim": embedding_dim,
            "compute_dtype": compute_dtype_of(inference_model),
            "signatures": list(endpoints),
            "exported_at": time.time()}
    info.update(extra_info or {})
    os.makedirs(os.path.join(export_dir, ASSETS_EXTRA_DIR), exist_ok=True)
    with open(os.path.join(export_dir, ASSETS_EXTRA_DIR, KDEM_INFO_FILE), "w") as f:
        json.dump(info, f, indent=2)
    write_warmup_file(export_dir, contract)  # assets.extra/tf_serving_warmup_requests (serving.export.warmup)
    return export_dir


def read_info(version_dir: str) -> dict:
    """The `assets.extra/kdem_info.json` of an exported version ({} when absent)."""
    path = os.path.join(version_dir, ASSETS_EXTRA_DIR, KDEM_INFO_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON ({error})") from None


def read_contract(version_dir: str, fallback_size: Optional[Sequence[int]] = None) -> ImageContract:
    """The image contract baked into an exported version (kdem_info.json `image_contract`); an export
    from before contracts: its `image_size` (or `fallback_size`) with the normalisation of that time."""
    info = read_info(version_dir)
    where = os.path.join(version_dir, ASSETS_EXTRA_DIR, KDEM_INFO_FILE)
    if "image_contract" in info:
        return ImageContract.from_dict(info["image_contract"], where=f"{where} image_contract")
    size = info.get("image_size") or fallback_size
    if not size:
        raise ValueError(f"{where}: no image_contract and no image_size (is {version_dir} a kdem-tf export?)")
    return as_contract(size)


def export_embedder(run_dir_or_keras_model: Union[str, keras.Model], model_base: str,
                    version: Optional[int] = None,
                    image_size: Optional[Union[ImageContract, Sequence[int]]] = None,
                    compute_dtype: str = "float32", extra_info: Optional[dict] = None) -> str:
    """Exports a run's inference model as `model_base/<version>/`, atomically.

    Args:
        run_dir_or_keras_model: a training run folder, or the Keras inference model itself
            (then `image_size` defaults to the model's input size, see `as_contract`).
        model_base: TF Serving base path.
        version: version number; default max existing + 1.
        image_size: an ImageContract or (H, W); default the run's contract (`run_contract`).
        compute_dtype: "float32" (default, whatever the run trained in) or "bfloat16" (asked for:
            `--compute-dtype bfloat16`, for CPUs with bf16 units); recorded in kdem_info.json.
        extra_info: more keys for kdem_info.json (e.g. `match_threshold`).

    Returns:
        the written version folder.
    """
    extra = {}
    if isinstance(run_dir_or_keras_model, str):
        model, run_info = load_run(run_dir_or_keras_model, compute_dtype)
        image_size = image_size or run_contract(run_dir_or_keras_model, run_info)
        extra = {k: run_info[k] for k in ("dataset", "num_classes") if k in run_info}
        extra["run_dir"] = os.path.abspath(run_dir_or_keras_model)
    else:
        model = run_dir_or_keras_model
        image_size = image_size or tuple(model.input["image"].shape[1:3])
    extra.update(extra_info or {})
    return artifacts.publish_version(lambda d: export_saved_model(model, image_size, d, extra), model_base, version)
