"""AGW's state dict (mangye16/Cross-Modal-Re-ID-baseline, `model.py`'s `embed_net`) → this project's layers.

AGW's names, from its `embed_net`, and where they go (`agw_tensors`):

- `visible_module.visible.{conv1,bn1}` → `visible_stem`, `thermal_module.thermal.{conv1,bn1}` →
  `infrared_stem`: AGW builds a whole ResNet-50 per modality and uses its stage 0 only, so the
  `layer1..4` inside those modules are ignored;
- `base_resnet.base.layer1..4` → `trunk` (torchvision's names within, mapped by
  `backbone_weights.torchvision_tensors`); the trunk module's own unused `conv1`/`bn1` are ignored;
- `NL_2.k`, `NL_3.k` (AGW's `Non_local` after the last 2 blocks of layer2 and the last 3 of layer3)
  → the k-th non-local block of conv3_x / conv4_x: `theta`, `phi`, `g.0` → theta, phi, g;
  `W.0` → output_conv, `W.1` → output_bn;
- `bottleneck` (BatchNorm1d) → `bn_neck`: its `bias` is frozen at 0 in AGW and the BN-neck here has
  no shift, so a non-zero `bottleneck.bias` is refused;
- `classifier.weight` [classes, 2048] → `classifier` (a Dense kernel [2048, classes]);
- `*.num_batches_tracked` is ignored.

Layouts: conv kernels OIHW → HWIO, Linear [out, in] → [in, out] (`backbone_weights.assign_torch_tensors`).
"""
from __future__ import annotations

import re
from typing import Dict, Optional, Tuple

import keras
import numpy as np

from kdem_tf.model.backbone_weights import (BackboneWeightsError, assign_torch_tensors, check_torchvision_state,
                                            torchvision_tensors)
from kdem_tf.model.non_local import NonLocalBlock

STEM_PREFIXES = {"visible_stem": "visible_module.visible.", "infrared_stem": "thermal_module.thermal."}
TRUNK_PREFIX = "base_resnet.base."
NECK_BIAS = "bottleneck.bias"
IGNORED_KEYS = re.compile(r"^(visible_module\.visible|thermal_module\.thermal)\.(layer\d|fc)\."
                          r"|^base_resnet\.base\.(conv1|bn1|fc)\.|\.num_batches_tracked$|^bottleneck\.bias$")
AGW_KEYS = ("AGW's embed_net (visible_module.visible.{conv1,bn1}, thermal_module.thermal.{conv1,bn1}, "
            "base_resnet.base.layer1..4, NL_2.*, NL_3.*, bottleneck, classifier)")
_BN_PARTS = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
             ("running_var", "moving_variance"))
_NON_LOCAL_CONVS = (("theta", "theta"), ("phi", "phi"), ("g.0", "g"), ("W.0", "output_conv"))


def _conv_tensors(conv: keras.layers.Conv2D, prefix: str) -> Dict[str, tuple]:
    kh, kw, cin, cout = conv.kernel.shape
    tensors = {f"{prefix}.weight": (conv.kernel, (cout, cin, kh, kw))}
    if conv.use_bias:
        tensors[f"{prefix}.bias"] = (conv.bias, (cout,))
    return tensors


def _bn_tensors(bn: keras.layers.BatchNormalization, prefix: str) -> Dict[str, tuple]:
    tensors = {}
    for torch_part, keras_part in _BN_PARTS:
        variable = getattr(bn, keras_part, None)
        if variable is not None:  # the BN-neck has no beta (center=False)
            tensors[f"{prefix}.{torch_part}"] = (variable, tuple(variable.shape))
    return tensors


def non_local_tensors(trunk: keras.Model) -> Dict[str, tuple]:
    """AGW key → (variable, torch shape) of the trunk's non-local blocks (NL_{stage-1}.{k} in block order)."""
    tensors, counts = {}, {}
    for layer in trunk.layers:
        if not isinstance(layer, NonLocalBlock):
            continue
        stage = int(layer.name.split("_")[0][len("conv"):])  # conv3_block3_non_local → 3
        index = counts.get(stage, 0)
        counts[stage] = index + 1
        prefix = f"NL_{stage - 1}.{index}"
        for agw_name, attribute in _NON_LOCAL_CONVS:
            tensors.update(_conv_tensors(getattr(layer, attribute), f"{prefix}.{agw_name}"))
        tensors.update(_bn_tensors(layer.output_bn, f"{prefix}.W.1"))
    return tensors


def agw_tensors(model: keras.Model) -> Dict[str, Tuple[keras.Variable, Tuple[int, ...]]]:
    """AGW key → (our variable, its shape in torch layout) for a model of `build_kdem_models` (train or
    inference; the classifier only where the model has one, the BN-neck where it is built)."""
    expected = {}
    for stem_name, prefix in STEM_PREFIXES.items():
        expected.update({prefix + k: v for k, v in torchvision_tensors(model.get_layer(stem_name)).items()})
    trunk = model.get_layer("trunk")
    expected.update({TRUNK_PREFIX + k: v for k, v in torchvision_tensors(trunk).items()})
    expected.update(non_local_tensors(trunk))
    names = {layer.name for layer in model.layers}
    if "bn_neck" in names:
        expected.update(_bn_tensors(model.get_layer("bn_neck"), "bottleneck"))
    if "classifier" in names:
        kernel = model.get_layer("classifier").kernel
        expected["classifier.weight"] = (kernel, (kernel.shape[1], kernel.shape[0]))
    return expected


def check_agw_state(state: Dict[str, np.ndarray], expected: Dict[str, tuple], source: str) -> None:
    """Raises BackboneWeightsError naming the first key that does not fit (unknown, wrong shape, missing) or
    a non-zero `bottleneck.bias`."""
    check_torchvision_state(state, expected, source, ignored=IGNORED_KEYS, known=AGW_KEYS)
    bias = state.get(NECK_BIAS)
    if bias is not None and np.any(np.asarray(bias) != 0):
        raise BackboneWeightsError(
            f"{source}: key {NECK_BIAS!r} is non-zero (max |bias| {float(np.max(np.abs(bias))):.3g}); AGW freezes "
            f"it at 0 and the BN-neck here has no shift, so these weights cannot be represented")


def load_agw_state(model: keras.Model, state: Dict[str, np.ndarray], source: str,
                   skip: Optional[re.Pattern] = None) -> int:
    """Checks `state` against `model` (`check_agw_state`) and assigns it; returns the number of tensors assigned.

    `skip`: expected keys to leave as they are (and not require), e.g. the classifier of a model trained on
    other identities."""
    expected = {k: v for k, v in agw_tensors(model).items() if not (skip and skip.search(k))}
    check_agw_state({k: v for k, v in state.items() if not (skip and skip.search(k))}, expected, source)
    assign_torch_tensors(expected, state)
    return len(expected)


def agw_architecture(state: Dict[str, np.ndarray], source: str) -> dict:
    """What the weights say about the network: {"num_classes", "non_local", "non_local_inner_channels"}
    (inner channels 1 as AGW's released code, "half" for C/2, else the number)."""
    if "classifier.weight" not in state or np.ndim(state["classifier.weight"]) != 2:
        raise BackboneWeightsError(f"{source}: no 2-D 'classifier.weight' (expected [classes, 2048]); is this "
                                   f"an AGW embed_net state dict? keys begin {sorted(state)[:3]}")
    architecture = {"num_classes": int(np.shape(state["classifier.weight"])[0]), "non_local": False,
                    "non_local_inner_channels": 1}
    g_key = "NL_2.0.g.0.weight"
    if g_key in state:
        inner, channels = np.shape(state[g_key])[:2]
        architecture.update(non_local=True,
                            non_local_inner_channels="half" if inner == channels // 2 and inner > 1 else int(inner))
    return architecture
