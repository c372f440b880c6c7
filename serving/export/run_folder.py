"""A training run folder as the exports read it: the inference model (in the compute dtype an
export runs), run_info.json and the image contract.

Shared by the SavedModel export (`serving.export.saved_model`) and the TFLite export
(`serving.export.tflite`); the folder's file names are `kdem_tf.artifacts`'.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Tuple

import keras

from kdem_tf import artifacts
from kdem_tf.image_contract import ImageContract, as_contract


def with_compute_dtype(model: keras.Model, dtype: str = "float32") -> keras.Model:
    """The same model (same weights) with every layer computing in `dtype`.

    A model trained under mixed_bfloat16 saves that policy in each layer's config, so it would
    export running Conv2D in bfloat16 (which TFLite refuses and serving CPUs without bf16 units run
    slowly): exports are float32 unless asked (`--compute-dtype`). Returns `model` itself when
    every layer already computes in `dtype`."""
    policy = "float32" if dtype == "float32" else f"mixed_{dtype}"
    if all(layer.dtype_policy.name == policy for layer in model._flatten_layers(include_self=False)):
        return model

    def retyped(node):
        if isinstance(node, dict):
            if node.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(node.get("config"), dict):
                return dict(node, config=dict(node["config"], name=policy))
            return {k: retyped(v) for k, v in node.items()}
        if isinstance(node, list):
            return [retyped(v) for v in node]
        return node

    import kdem_tf.model.model  # noqa: F401  (registers the custom layers)
    copy = keras.Model.from_config(retyped(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


def compute_dtype_of(model: keras.Model) -> str:
    """The compute dtype of the model's convolutions (what an export runs)."""
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            return str(layer.compute_dtype)
    return str(model.compute_dtype)


def load_run(run_dir: str, compute_dtype: str = "float32") -> Tuple[keras.Model, dict]:
    """Loads `RUN_DIR/inference_model.keras` and `RUN_DIR/run_info.json`.

    Args:
        run_dir: a training run folder written by `kdem_tf.train`.
        compute_dtype: the dtype the returned model computes in (float32 unless asked; a run trained
            under mixed precision saved its policy in every layer: see `with_compute_dtype`).

    Returns:
        (inference_model, run_info).
    """
    info_path = os.path.join(run_dir, artifacts.RUN_INFO_FILE)
    model_path = os.path.join(run_dir, artifacts.INFERENCE_MODEL_FILE)
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
    return with_compute_dtype(model, compute_dtype), run_info


def run_contract(run_dir: str, run_info: Optional[dict] = None) -> ImageContract:
    """The image contract a run was trained with: RUN_DIR/image_contract.json, else run_info.json's
    `image_contract`; a run folder from before contracts (only `image_size`) used torchvision's
    normalisation (`image_contract.as_contract`)."""
    if os.path.exists(os.path.join(run_dir, artifacts.IMAGE_CONTRACT_FILE)):
        return ImageContract.load(run_dir)
    info_path = os.path.join(run_dir, artifacts.RUN_INFO_FILE)
    if run_info is None:
        with open(info_path) as f:
            run_info = json.load(f)
    if "image_contract" in run_info:
        return ImageContract.from_dict(run_info["image_contract"], where=f"{info_path} image_contract")
    return as_contract(run_info["image_size"])
