"""ImageNet weights for the ResNet-50 stems and trunk, torchvision's or Keras'.

`load_backbone_weights(stems, trunk, weights)` accepts

- "torchvision": torchvision's ImageNet ResNet-50 (IMAGENET1K_V1, the
  `resnet50-19c8e357.pth` AGW loads), downloaded once as timm's `resnet50.tv_in1k`
  safetensors file (TORCHVISION_WEIGHTS_URL) on a connected machine;
- a `.safetensors` file of those weights (read with NumPy, `safetensors_io`), or a
  `.pth`/`.pt`/`.bin` torchvision state dict (needs PyTorch);
- "imagenet" (Keras' download) or a `.h5`/`.keras` file of `keras.applications.ResNet50`;
- None / "none": random initialisation.

torchvision weights are mapped by name (`torchvision_name`: conv1/bn1 into both
stems, layer1.0.conv1 ... layer4.2.bn3 and downsample.0/.1 into the trunk, fc.*
ignored), OIHW kernels transposed to HWIO, BN weight/bias/running_mean/running_var
to gamma/beta/moving_mean/moving_variance. They fit only the "torchvision" backbone
(v1.5, bias-free) and Keras' only the "keras" one (v1, conv biases): see
`backbone_for_weights`, which config validation uses. The normalisation each kind
was trained with is `kdem_tf.image_contract.normalization_for_weights`.
"""
from __future__ import annotations

import os
import re
import tempfile
import urllib.request
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from kdem_tf.architecture import backbone_for_weights
from kdem_tf.model.safetensors_io import read_safetensors

TORCHVISION_WEIGHTS_URL = "https://huggingface.co/timm/resnet50.tv_in1k/resolve/main/model.safetensors"
TORCHVISION_WEIGHTS_FILE = "resnet50.tv_in1k.safetensors"
_TORCH_FILE_SUFFIXES = (".pth", ".pt", ".bin")
_IGNORED_KEYS = re.compile(r"^fc\.|\.num_batches_tracked$")
_BN_TENSORS = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
               ("running_var", "moving_variance"))
_BLOCK_LAYER = re.compile(r"^conv(\d)_block(\d+)_(\d)_(conv|bn)$")


class BackboneWeightsError(ValueError):
    """Weights that do not fit the backbone, or cannot be read; the message names the file and key."""



def torchvision_name(layer_name: str) -> str:
    """Our (keras.applications) layer name → torchvision's module name.

    >>> [torchvision_name(n) for n in ("conv1_conv", "conv2_block1_0_bn", "conv5_block3_3_conv")]
    ['conv1', 'layer1.0.downsample.1', 'layer4.2.conv3']
    """
    if layer_name in ("conv1_conv", "conv1_bn"):
        return "conv1" if layer_name == "conv1_conv" else "bn1"
    match = _BLOCK_LAYER.match(layer_name)
    if not match:
        raise BackboneWeightsError(f"layer {layer_name!r} has no torchvision counterpart")
    stage, block, index, kind = int(match[1]), int(match[2]), int(match[3]), match[4]
    prefix = f"layer{stage - 1}.{block - 1}"
    if index == 0:  # the projection shortcut
        return f"{prefix}.downsample.{0 if kind == 'conv' else 1}"
    return f"{prefix}.{kind}{index}"


def _pretrained_layers(model: keras.Model) -> List[keras.layers.Layer]:
    """The conv and BN layers of a stem or trunk that ImageNet weights cover (non-local blocks aside)."""
    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.BatchNormalization))]


def torchvision_tensors(model: keras.Model) -> Dict[str, Tuple[keras.Variable, Tuple[int, ...]]]:
    """torchvision key → (our variable, the key's shape in torch layout) for one stem or the trunk."""
    expected = {}
    for layer in _pretrained_layers(model):
        name = torchvision_name(layer.name)
        if isinstance(layer, keras.layers.Conv2D):
            if layer.use_bias:
                raise BackboneWeightsError(
                    f"torchvision weights need model.backbone=torchvision (bias-free ResNet-50 v1.5); layer "
                    f"{layer.name} of {model.name} has a bias, i.e. this is the 'keras' (v1) backbone")
            kh, kw, cin, cout = layer.kernel.shape
            expected[f"{name}.weight"] = (layer.kernel, (cout, cin, kh, kw))
        else:
            for torch_part, keras_part in _BN_TENSORS:
                variable = getattr(layer, keras_part)
                expected[f"{name}.{torch_part}"] = (variable, tuple(variable.shape))
    return expected


TORCHVISION_KEYS = "torchvision's ResNet-50 backbone (conv1, bn1, layer1.0.conv1 ... layer4.2.bn3, fc.*)"


def check_torchvision_state(state: Dict[str, np.ndarray], expected: Dict[str, tuple], source: str,
                            ignored: "re.Pattern" = _IGNORED_KEYS, known: str = TORCHVISION_KEYS) -> None:
    """Raises BackboneWeightsError naming the first key of `state` that does not fit (name, then shape, then missing).

    `ignored`: keys skipped (matched with `search`); `known`: what the expected keys are, for the message.
    """
    for key, value in state.items():
        if ignored.search(key):
            continue
        if key not in expected:
            missing = next((k for k in expected if k not in state), None)
            hint = (f"; the first expected key it lacks is {missing!r} with shape {list(expected[missing][1])}"
                    if missing else "")
            raise BackboneWeightsError(f"{source}: key {key!r} is not a tensor of {known}{hint}")
        shape = tuple(np.shape(value))
        if shape != expected[key][1]:
            raise BackboneWeightsError(f"{source}: key {key!r} has shape {list(shape)}; this backbone expects "
                                       f"{list(expected[key][1])} (torch layout, convs OIHW)")
    for key, (_, shape) in expected.items():
        if key not in state:
            raise BackboneWeightsError(f"{source}: missing key {key!r} (expected shape {list(shape)})")


def load_torchvision_state(stems: Sequence[keras.Model], trunk: keras.Model, state: Dict[str, np.ndarray],
                           source: str = "weights") -> int:
    """Copies a torchvision ResNet-50 state dict into every stem (conv1, bn1) and the trunk.

    Returns the number of layers that received weights (the stem layers once per stem).
    """
    targets = [torchvision_tensors(stem) for stem in stems] + [torchvision_tensors(trunk)]
    check_torchvision_state(state, {k: v for target in targets for k, v in target.items()}, source)
    for target in targets:
        assign_torch_tensors(target, state)
    return sum(len(_pretrained_layers(model)) for model in list(stems) + [trunk])


def assign_torch_tensors(expected: Dict[str, tuple], state: Dict[str, np.ndarray]) -> None:
    """Assigns each torch-layout tensor of `state` named in `expected` (key → (variable, shape)) to its variable:
    conv kernels OIHW → HWIO, Linear weights [out, in] → Dense kernels [in, out], vectors as they are."""
    for key, (variable, _) in expected.items():
        value = np.asarray(state[key], dtype=np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW → HWIO
        elif value.ndim == 2:
            value = value.T  # torch.nn.Linear [out, in] → keras.layers.Dense [in, out]
        variable.assign(value.astype(variable.dtype))


def read_torch_file(path: str) -> Dict[str, np.ndarray]:
    """A `.pth` state dict as NumPy arrays; needs PyTorch (the safetensors file does not)."""
    try:
        import torch
    except ImportError:
        raise BackboneWeightsError(
            f"{path}: reading a .pth file needs PyTorch, which is not installed; use the safetensors file of "
            f"timm's resnet50.tv_in1k instead ({TORCHVISION_WEIGHTS_URL}), which is read without PyTorch") from None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneWeightsError(f"{path}: expected a state dict (name → tensor), got {type(state).__name__}")
    return {key: value.detach().cpu().float().numpy() for key, value in state.items() if hasattr(value, "detach")}


def download_torchvision_weights(origin: str = TORCHVISION_WEIGHTS_URL, cache_dir: Optional[str] = None) -> str:
    """Path of timm's resnet50.tv_in1k safetensors file, downloaded once into the Keras cache."""
    cache_dir = cache_dir or os.path.join(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras")), "models")
    path = os.path.join(cache_dir, TORCHVISION_WEIGHTS_FILE)
    if os.path.exists(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(origin, timeout=60) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(temporary, path)  # atomic: a broken download never looks complete
    except OSError as error:
        raise BackboneWeightsError(
            f"backbone_weights=torchvision: cannot download {origin} ({error}); on a machine without network, "
            f"fetch that file elsewhere and pass it with --backbone-weights FILE.safetensors") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _source_resnet50(weights: str) -> keras.Model:
    """A `keras.applications.ResNet50` holding the Keras weights to copy."""
    if weights == "imagenet":
        return keras.applications.ResNet50(include_top=False, weights="imagenet")
    if not os.path.exists(weights):
        raise FileNotFoundError(f"backbone weights file not found: {weights}")
    # A file may hold the classifier ("predictions") or not: try without, then with.
    errors = []
    for include_top in (False, True):
        model = keras.applications.ResNet50(
            include_top=include_top, weights=None, input_shape=(224, 224, 3) if include_top else None)
        try:
            model.load_weights(weights)
            return model
        except Exception as error:  # wrong variant: try the other one
            errors.append(f"include_top={include_top}: {error}")
    raise BackboneWeightsError(f"{weights} is not a keras.applications.ResNet50 weights file: " + "; ".join(errors))


def load_keras_weights(stems: Sequence[keras.Model], trunk: keras.Model, weights: str) -> int:
    """Copies keras.applications.ResNet50 weights by layer name (conv1_* into every stem)."""
    if not stems[0].get_layer("conv1_conv").use_bias:
        raise BackboneWeightsError(f"backbone weights {weights!r} are keras.applications.ResNet50 (v1, conv "
                                   f"biases) and need model.backbone=keras; this is the 'torchvision' backbone")
    source = _source_resnet50(weights)
    copied = 0
    for source_layer in source.layers:
        if not source_layer.weights or source_layer.name == "predictions":
            continue
        targets = stems if source_layer.name.startswith("conv1_") else [trunk]
        for target_model in targets:
            target_model.get_layer(source_layer.name).set_weights(source_layer.get_weights())
            copied += 1
    return copied


def load_backbone_weights(stems: Sequence[keras.Model], trunk: keras.Model, weights: Optional[str]) -> int:
    """Copies ImageNet ResNet-50 weights into every stem and the trunk (see the module docstring).

    Non-local blocks have no counterpart and keep their initialisation (identity).

    Returns:
        The number of layers that received weights (0 for random init).
    """
    if weights is None or str(weights).lower() in ("", "none"):
        return 0
    weights = str(weights)
    if backbone_for_weights(weights) == "keras":
        return load_keras_weights(stems, trunk, weights)
    path = download_torchvision_weights() if weights == "torchvision" else weights
    if not os.path.exists(path):
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    state = read_torch_file(path) if path.lower().endswith(_TORCH_FILE_SUFFIXES) else read_safetensors(path)
    return load_torchvision_state(stems, trunk, state, source=path)
