"""The torchvision (v1.5) ResNet-50 stems and trunk against a NumPy reference of torchvision's forward.

The reference is written from torchvision's resnet.py semantics (NCHW, OIHW, symmetric
zero padding, stride on the 3x3 conv, bias-free convs, BN eps 1e-5, max-pool padded with
-inf) and runs on the same random weights, loaded from a safetensors file with the
published key names. Even feature-map sizes make Keras' asymmetric "same" padding under
stride 2, or a stride on the first 1x1 conv (v1), change the result.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest

from kdem_tf.model.backbone_weights import load_backbone_weights
from kdem_tf.model.resnet import build_stem, build_trunk

# float32 Keras vs float64 NumPy through 53 conv layers, relative to the largest activation.
RELATIVE_TOLERANCE = 1e-5  # measured: 5e-7


def np_conv(x, weight, stride=1, padding=0):
    """torch.nn.functional.conv2d without bias: x [N, C, H, W], weight [O, C, kh, kw]."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = weight.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, weight, optimize=True)


def np_bn(x, state, name, eps=1e-5):
    scale = state[f"{name}.weight"] / np.sqrt(state[f"{name}.running_var"].astype(np.float64) + eps)
    shift = state[f"{name}.bias"] - state[f"{name}.running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def np_max_pool_3x3_s2_p1(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    return windows.max(axis=(-1, -2))


def np_stem(x, state):
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    return np_max_pool_3x3_s2_p1(relu(np_bn(np_conv(x, state["conv1.weight"], 2, 3), state, "bn1")))


def np_bottleneck(x, state, prefix, stride):
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    out = relu(np_bn(np_conv(x, state[f"{prefix}.conv1.weight"]), state, f"{prefix}.bn1"))
    out = relu(np_bn(np_conv(out, state[f"{prefix}.conv2.weight"], stride, 1), state, f"{prefix}.bn2"))
    out = np_bn(np_conv(out, state[f"{prefix}.conv3.weight"]), state, f"{prefix}.bn3")
    if f"{prefix}.downsample.0.weight" in state:
        x = np_bn(np_conv(x, state[f"{prefix}.downsample.0.weight"], stride), state, f"{prefix}.downsample.1")
    return relu(out + x)


def np_trunk(x, state, last_stride):
    for layer, (blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, last_stride)), start=1):
        for block in range(blocks):
            x = np_bottleneck(x, state, f"layer{layer}.{block}", stride if block == 0 else 1)
    return x


def _assert_close(ours_nhwc, reference_nchw):
    reference = reference_nchw.transpose(0, 2, 3, 1)
    assert ours_nhwc.shape == reference.shape
    error = np.max(np.abs(ours_nhwc - reference)) / np.max(np.abs(reference))
    assert error < RELATIVE_TOLERANCE, f"max |Δ| / max |ref| = {error:.2e}"


@pytest.mark.parametrize("image_size, last_stride", [((64, 32), 2), ((50, 26), 1)])
def test_torchvision_stems_and_trunk_match_numpy_reference(torchvision_state, torchvision_safetensors,
                                                           image_size, last_stride):
    height, width = image_size
    stems = [build_stem(name, (height, width, 3), backbone="torchvision") for name in ("visible_stem", "infrared_stem")]
    trunk = build_trunk("trunk", tuple(stems[0].output.shape[1:]), last_stride=last_stride, non_local=False,
                        backbone="torchvision")
    load_backbone_weights(stems, trunk, torchvision_safetensors)
    images = np.random.default_rng(1).normal(size=(2, height, width, 3)).astype(np.float32)
    reference_stem = np_stem(images.transpose(0, 3, 1, 2).astype(np.float64), torchvision_state)
    for stem in stems:  # both modality stems hold conv1 + bn1
        stem_out = keras.ops.convert_to_numpy(stem(images, training=False))
        _assert_close(stem_out, reference_stem)
    trunk_out = keras.ops.convert_to_numpy(trunk(stem_out, training=False))
    _assert_close(trunk_out, np_trunk(reference_stem, torchvision_state, last_stride))


def test_torchvision_variant_is_v1_5_and_keras_variant_is_v1():
    v15 = build_trunk("trunk", (16, 8, 64), non_local=False, backbone="torchvision")
    v1 = build_trunk("trunk", (16, 8, 64), non_local=False, backbone="keras")
    # v1.5: stride 2 on the 3x3 conv of the first bottleneck; v1: on the first 1x1.
    assert v15.get_layer("conv3_block1_1_conv").strides == (1, 1) and v15.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert v1.get_layer("conv3_block1_1_conv").strides == (2, 2) and v1.get_layer("conv3_block1_2_conv").strides == (1, 1)
    v15_convs = [layer for layer in v15.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(v15_convs) == 52 and not any(layer.use_bias for layer in v15_convs)
    assert all(layer.use_bias for layer in v1.layers if isinstance(layer, keras.layers.Conv2D))
    assert {layer.epsilon for layer in v15.layers if isinstance(layer, keras.layers.BatchNormalization)} == {1e-5}
    assert {layer.momentum for layer in v15.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.9}
    with pytest.raises(ValueError, match="model.backbone: unknown 'resnet'"):
        build_stem("stem", (64, 32, 3), backbone="resnet")
