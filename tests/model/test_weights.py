"""Backbone weights: the safetensors reader, torchvision names into both stems and the trunk, errors, Keras' path."""
from __future__ import annotations

import importlib.util
import json
import struct

import keras
import numpy as np
import pytest

from kdem_tf import config as config_lib
from kdem_tf.image_contract import ImageContract
from kdem_tf.model.backbone_weights import (BackboneWeightsError, download_torchvision_weights,
                                            load_backbone_weights, torchvision_name)
from kdem_tf.model.resnet import build_stem, build_trunk
from kdem_tf.model.safetensors_io import SafetensorsError, read_safetensors
from tests.model.conftest import write_safetensors


def _backbone(backbone="torchvision", image_size=(64, 32)):
    stems = [build_stem(name, image_size + (3,), backbone=backbone) for name in ("visible_stem", "infrared_stem")]
    trunk = build_trunk("trunk", tuple(stems[0].output.shape[1:]), non_local=True, backbone=backbone)
    return stems, trunk


def test_safetensors_reader_reads_what_the_format_writes(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1.5, -2.0], np.float16),
               "scalar": np.array(7, np.int64)}
    path = tmp_path / "t.safetensors"
    write_safetensors(path, tensors)
    loaded = read_safetensors(str(path))
    assert sorted(loaded) == ["a", "b", "scalar"]
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        np.testing.assert_array_equal(loaded[name], value)


def test_safetensors_reader_widens_bfloat16(tmp_path):
    values = np.array([1.0, -3.5, 0.15625], np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, len(raw)]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + raw)
    np.testing.assert_array_equal(read_safetensors(str(path))["w"], values)


def _with_header(header: bytes, data: bytes = b"\0" * 8) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


@pytest.mark.parametrize("content, message", [
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 10 ** 6) + b"{}", "header length 1000000 does not fit"),
    (_with_header(b"nope"), "not UTF-8 JSON"),
    (_with_header(b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}'), "do not hold F32 \\[4\\]"),
    (_with_header(b'{"w": {"dtype": "Q8", "shape": [2], "data_offsets": [0, 2]}}'), "unsupported dtype 'Q8'"),
    (_with_header(b'{"w": {"shape": [2]}}'), "lacks dtype, shape or data_offsets"),
], ids=["short", "header-length", "not-json", "offsets", "dtype", "fields"])
def test_safetensors_reader_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(SafetensorsError, match=message) as error:
        read_safetensors(str(path))
    assert str(path) in str(error.value)


def test_torchvision_names():
    assert [torchvision_name(n) for n in ("conv1_conv", "conv1_bn", "conv2_block1_0_conv", "conv2_block1_0_bn",
                                          "conv3_block4_2_conv", "conv5_block3_3_bn")] == [
        "conv1", "bn1", "layer1.0.downsample.0", "layer1.0.downsample.1", "layer2.3.conv2", "layer4.2.bn3"]


def test_published_names_load_into_both_stems_and_the_trunk(torchvision_state, torchvision_safetensors):
    stems, trunk = _backbone()
    non_local_before = [w.numpy().copy() for w in trunk.get_layer("conv3_block3_non_local").weights]
    copied = load_backbone_weights(stems, trunk, torchvision_safetensors)
    assert copied == 2 * 2 + 52 * 2  # conv1 + bn1 per stem; 52 convs and 52 BNs in the trunk
    for stem in stems:
        np.testing.assert_array_equal(stem.get_layer("conv1_conv").kernel.numpy(),
                                      torchvision_state["conv1.weight"].transpose(2, 3, 1, 0))
        np.testing.assert_array_equal(stem.get_layer("conv1_bn").moving_variance.numpy(),
                                      torchvision_state["bn1.running_var"])
    np.testing.assert_array_equal(trunk.get_layer("conv3_block1_2_conv").kernel.numpy(),
                                  torchvision_state["layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
    shortcut_bn = trunk.get_layer("conv5_block1_0_bn")
    for ours, theirs in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean")):
        np.testing.assert_array_equal(getattr(shortcut_bn, ours).numpy(),
                                      torchvision_state[f"layer4.0.downsample.1.{theirs}"])
    # Non-local blocks have no ImageNet counterpart: untouched.
    for before, after in zip(non_local_before, trunk.get_layer("conv3_block3_non_local").weights):
        np.testing.assert_array_equal(before, after.numpy())


def _write_changed(tmp_path, state, rename=None, reshape=None, drop=None):
    changed = dict(state)
    if rename:
        old, new = rename
        changed = {(new if k == old else k): v for k, v in changed.items()}
    if reshape:
        changed[reshape] = changed[reshape][:, :-1]
    if drop:
        del changed[drop]
    path = tmp_path / "changed.safetensors"
    write_safetensors(path, changed)
    return str(path)


def test_a_misnamed_key_is_named_with_the_expected_one(tmp_path, torchvision_state):
    path = _write_changed(tmp_path, torchvision_state, rename=("layer2.1.bn2.running_var", "layer2.1.bn2.running_vr"))
    with pytest.raises(BackboneWeightsError, match=r"key 'layer2.1.bn2.running_vr' is not a tensor of torchvision's "
                                                   r"ResNet-50.*'layer2.1.bn2.running_var' with shape \[128\]"):
        load_backbone_weights(*_backbone(), path)


def test_a_wrong_shape_is_named_with_the_expected_shape(tmp_path, torchvision_state):
    path = _write_changed(tmp_path, torchvision_state, reshape="layer3.0.downsample.0.weight")
    with pytest.raises(BackboneWeightsError, match=r"key 'layer3.0.downsample.0.weight' has shape \[1024, 511, 1, 1\]; "
                                                   r"this backbone expects \[1024, 512, 1, 1\]"):
        load_backbone_weights(*_backbone(), path)


def test_a_missing_key_is_named_with_its_shape(tmp_path, torchvision_state):
    path = _write_changed(tmp_path, torchvision_state, drop="layer4.2.bn3.bias")
    with pytest.raises(BackboneWeightsError, match=r"missing key 'layer4.2.bn3.bias' \(expected shape \[2048\]\)"):
        load_backbone_weights(*_backbone(), path)


def test_torchvision_weights_into_the_keras_backbone_are_refused(torchvision_safetensors):
    with pytest.raises(BackboneWeightsError, match="need model.backbone=torchvision"):
        load_backbone_weights(*_backbone("keras"), torchvision_safetensors)


def test_keras_weights_into_the_torchvision_backbone_are_refused(tmp_path):
    with pytest.raises(BackboneWeightsError, match="need model.backbone=keras"):
        load_backbone_weights(*_backbone("torchvision"), str(tmp_path / "resnet50.weights.h5"))


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed: .pth is readable")
def test_pth_without_torch_says_torch_is_needed_and_points_to_safetensors(tmp_path):
    path = tmp_path / "resnet50-19c8e357.pth"
    path.write_bytes(b"PK\x03\x04 not read")
    with pytest.raises(BackboneWeightsError, match=r"needs PyTorch, which is not installed; use the safetensors file"):
        load_backbone_weights(*_backbone(), str(path))


def test_download_failure_points_to_the_local_file_flag(tmp_path):
    # A real connection to a closed local port: what an offline machine sees.
    with pytest.raises(BackboneWeightsError, match=r"cannot download http://127.0.0.1:9/.*--backbone-weights FILE"):
        download_torchvision_weights(origin="http://127.0.0.1:9/model.safetensors", cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_keras_weights_get_bgr_and_mean_subtraction_through_the_contract():
    keras_config = config_lib.load_config("paper", overrides=["model.backbone=keras", "model.backbone_weights=imagenet"])
    contract = ImageContract.from_config(keras_config)
    assert (contract.normalization, contract.channel_order, contract.scale) == ("caffe", "BGR", 1.0)
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)  # one pixel, R=10 G=20 B=30
    np.testing.assert_allclose(keras.ops.convert_to_numpy(contract.normalize(rgb))[0, 0, 0],
                               [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    h5_config = config_lib.load_config("paper", overrides=["model.backbone=keras", "model.backbone_weights=r50.h5"])
    assert ImageContract.from_config(h5_config).normalization == "caffe"
    paper = ImageContract.from_config(config_lib.load_config("paper"))
    assert (paper.normalization, paper.channel_order) == ("torchvision", "RGB")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(paper.normalize(rgb))[0, 0, 0],
                               (np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
                               rtol=1e-5)
