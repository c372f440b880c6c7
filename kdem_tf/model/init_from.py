"""Start a run from earlier weights: `python -m kdem_tf.train ... --init-from RUN_DIR|CHECKPOINT`
(the config's `model.init_from`, so the TFX pipeline takes it too: `--set model.init_from=...`).

Sources:

- a run folder, of `kdem_tf.train` or of `kdem_tf.import_checkpoint`: its `inference_model.keras`
  gives the two stems, the trunk (non-local blocks included) and the BN-neck, layer by layer and
  variable by variable (BN moving statistics included); its `classifier.npy` (written by the import)
  the identity classifier;
- an AGW checkpoint file (`.t`/`.pth` in torch's zip or legacy format, `.safetensors`), mapped as
  `kdem_tf.import_checkpoint` maps it (`kdem_tf.model.agw_weights`).

What starts fresh: the KDEM layer always (neither source has one: the inference model has no KDEM,
paper Sec. 3.3), the classifier when the source has none or another number of identities, and the
optimizer (step 0, no momentum). The source's image contract must be the new run's (the same pixels
in), and every variable must have the new network's shape: otherwise an error names the first that
does not fit.
"""
from __future__ import annotations

import os
import re
from typing import List

import keras
import numpy as np

from kdem_tf.artifacts import CLASSIFIER_FILE
from kdem_tf.image_contract import CONTRACT_FILE, ImageContract

TRANSFERRED_LAYERS = ("visible_stem", "infrared_stem", "trunk", "bn_neck")
INFERENCE_MODEL_FILE = "inference_model.keras"
AGW_NORMALIZATION = "torchvision"  # AGW's loaders normalise with torchvision's ImageNet mean/std
_CLASSIFIER_KEY = re.compile(r"^classifier\.")


class InitFromError(ValueError):
    """Weights that cannot start this run; the message names the source, the variable and the shapes."""


def _copy_layer(source_layer, target_layer, where: str) -> int:
    """Copies every variable of `source_layer` into `target_layer` (same order and shapes, else an error)."""
    sources, targets = source_layer.weights, target_layer.weights
    for index, target in enumerate(targets):
        if index >= len(sources):
            raise InitFromError(f"{where}: {target_layer.name} has no variable for {target.path} (expected shape "
                                f"{list(target.shape)}); it holds {len(sources)} variables, this model {len(targets)}")
        if tuple(sources[index].shape) != tuple(target.shape):
            raise InitFromError(f"{where}: {sources[index].path} has shape {list(sources[index].shape)}; this model "
                                f"expects {list(target.shape)} for {target.path} (another width, depth or non-local "
                                f"setting?)")
    if len(sources) != len(targets):
        raise InitFromError(f"{where}: {source_layer.name} holds {len(sources)} variables, this model "
                            f"{len(targets)} (first extra: {sources[len(targets)].path})")
    for source, target in zip(sources, targets):
        target.assign(keras.ops.convert_to_numpy(source).astype(target.dtype))
    return len(targets)


def _check_contract(source_normalization: str, contract: ImageContract, where: str) -> None:
    if source_normalization != contract.normalization:
        raise InitFromError(f"{where}: trained on {source_normalization!r}-normalised images, this run feeds "
                            f"{contract.normalization!r} ones; set data.normalization={source_normalization} "
                            f"(or backbone weights of that kind)")


def _copy_classifier(kernel: np.ndarray, train_model: keras.Model, where: str) -> str:
    target = train_model.get_layer("classifier").kernel
    if tuple(kernel.shape) != tuple(target.shape):
        return (f"classifier fresh ({where} has {kernel.shape[-1]} classes of {kernel.shape[0]}-d features, "
                f"this data {target.shape[-1]} of {target.shape[0]})")
    target.assign(kernel.astype(target.dtype))
    return f"classifier from {where}"


def _from_run_folder(run_dir: str, train_model: keras.Model, contract: ImageContract) -> List[str]:
    import kdem_tf.model.model  # noqa: F401  (registers the custom layers for loading)

    model_path = os.path.join(run_dir, INFERENCE_MODEL_FILE)
    if not os.path.exists(model_path):
        raise InitFromError(f"--init-from {run_dir}: no {INFERENCE_MODEL_FILE} (a finished kdem_tf.train run or a "
                            f"kdem_tf.import_checkpoint folder has one)")
    if os.path.exists(os.path.join(run_dir, CONTRACT_FILE)):
        _check_contract(ImageContract.load(run_dir).normalization, contract, run_dir)
    source = keras.saving.load_model(model_path, compile=False)
    source_names = {layer.name for layer in source.layers}
    copied = 0
    for name in TRANSFERRED_LAYERS:
        if name not in {layer.name for layer in train_model.layers}:
            continue
        if name not in source_names:
            raise InitFromError(f"{model_path}: no layer {name!r}, which this model has")
        copied += _copy_layer(source.get_layer(name), train_model.get_layer(name), model_path)
    notes = [f"{copied} variables of {', '.join(TRANSFERRED_LAYERS)} from {model_path}"]
    classifier_path = os.path.join(run_dir, CLASSIFIER_FILE)
    if os.path.exists(classifier_path):
        notes.append(_copy_classifier(np.load(classifier_path, allow_pickle=False), train_model, classifier_path))
    else:
        notes.append(f"classifier fresh ({run_dir} has no {CLASSIFIER_FILE})")
    return notes


def _from_agw_checkpoint(path: str, train_model: keras.Model, contract: ImageContract) -> List[str]:
    from kdem_tf.model.agw_weights import load_agw_state
    from kdem_tf.model.torch_checkpoint import read_checkpoint

    _check_contract(AGW_NORMALIZATION, contract, path)
    state, _ = read_checkpoint(path)
    copied = load_agw_state(train_model, state, path, skip=_CLASSIFIER_KEY)
    notes = [f"{copied} AGW tensors from {path}"]
    if "classifier.weight" in state:
        notes.append(_copy_classifier(np.asarray(state["classifier.weight"], np.float32).T, train_model, path))
    return notes


def init_from(source: str, train_model: keras.Model, contract: ImageContract) -> str:
    """Loads the weights of `source` (run folder or AGW checkpoint) into a `build_kdem_models` train model;
    returns one line saying what came from where and what starts fresh."""
    if os.path.isdir(source):
        notes = _from_run_folder(source, train_model, contract)
    elif os.path.isfile(source):
        notes = _from_agw_checkpoint(source, train_model, contract)
    else:
        raise InitFromError(f"--init-from {source}: no such run folder or checkpoint file")
    if "kdem" in {layer.name for layer in train_model.layers}:
        notes.append("KDEM layer fresh")
    return "init from: " + "; ".join(notes)
