"""The image contract: normalisation values by hand, channel order, resize, serialisation, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from kdem_tf import config as config_lib
from kdem_tf import image_contract as ic
from kdem_tf.image_contract import ContractError, ImageContract

# One RGB pixel per row, 0..255.
PIXELS = np.array([[[0.0, 0.0, 0.0], [255.0, 255.0, 255.0], [10.0, 128.0, 250.0]]], np.float32)


def test_torchvision_normalisation_is_rgb_over_255_minus_mean_over_std():
    out = ImageContract((1, 3), "torchvision").normalize(PIXELS).numpy()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = (PIXELS / 255.0 - mean) / std  # torchvision's ToTensor + Normalize, by hand
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    assert out[0, 2, 0] < out[0, 2, 2]  # R (10) stays first: no channel swap


def test_caffe_normalisation_is_bgr_minus_mean_without_scaling():
    out = ImageContract((1, 3), "caffe").normalize(PIXELS).numpy()
    bgr_mean = np.array([103.939, 116.779, 123.68])
    expected = PIXELS[..., ::-1] - bgr_mean  # keras.applications.resnet50.preprocess_input, by hand
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-4)
    # The blue value 250 of the last pixel is channel 0 after the swap.
    assert out[0, 2, 0] == pytest.approx(250.0 - 103.939, abs=1e-4)
    assert out[0, 2, 2] == pytest.approx(10.0 - 123.68, abs=1e-4)


def test_keras_resnet50_preprocess_input_agrees_with_caffe():
    from keras.applications import resnet50

    expected = np.asarray(resnet50.preprocess_input(PIXELS.copy()[None]))[0]
    np.testing.assert_allclose(ImageContract((1, 3), "caffe").normalize(PIXELS).numpy(), expected, atol=1e-4)


def test_normalisation_follows_the_weights_and_a_mismatch_is_refused():
    assert ic.resolve_normalization("auto", "imagenet") == "caffe"
    assert ic.resolve_normalization("auto", "torchvision") == "torchvision"
    assert ic.resolve_normalization("auto", "/w/resnet50.safetensors") == "torchvision"
    assert ic.resolve_normalization("auto", "/w/resnet50.weights.h5") == "caffe"
    assert ic.resolve_normalization("auto", "none") == "torchvision"
    with pytest.raises(ContractError, match="torchvision.*imagenet.*caffe"):
        ic.resolve_normalization("torchvision", "imagenet")
    with pytest.raises(ContractError, match="unknown 'bgr'"):
        ic.resolve_normalization("bgr", "none")


RESNET50 = ["model.width=1", "model.stage_blocks=3,4,6,3"]  # the tiny preset's network at ResNet-50's size


def test_config_with_weights_and_the_wrong_normalisation_is_refused_at_load():
    with pytest.raises(config_lib.ConfigError, match="data.normalization='torchvision'.*backbone_weights='imagenet'"):
        config_lib.load_config("tiny", overrides=RESNET50 + ["model.backbone=keras", "model.backbone_weights=imagenet",
                                                             "data.normalization=torchvision"])
    config = config_lib.load_config("tiny", overrides=RESNET50 + ["model.backbone=keras", "model.backbone_weights=imagenet"])
    assert config.data.normalization == "auto" and ImageContract.from_config(config).normalization == "caffe"


def test_to_dict_round_trip_and_save_load(tmp_path):
    contract = ImageContract((96, 48), "caffe")
    data = contract.to_dict()
    assert data["channel_order"] == "BGR" and data["resize"] == {"method": "lanczos3", "antialias": True}
    assert data["modalities"] == ["visible", "infrared"]
    assert ImageContract.from_dict(json.loads(json.dumps(data))) == contract
    path = contract.save(str(tmp_path))
    assert path.endswith(ic.CONTRACT_FILE) and ImageContract.load(str(tmp_path)) == contract
    (tmp_path / "bad.json").write_text('{"image_size": [96, 48]}')
    with pytest.raises(ContractError, match="bad.json: missing field 'normalization'"):
        ImageContract.load(str(tmp_path / "bad.json"))
    with pytest.raises(ContractError, match="modalities"):
        ImageContract.from_dict(dict(data, modalities=["rgb", "ir"]))


def test_wrong_modality_is_refused_with_where():
    assert [ic.modality_index(m) for m in ic.MODALITIES] == [0, 1]
    with pytest.raises(ContractError, match="query.txt:3: must be one of \\['visible', 'infrared'\\], got 'thermal'"):
        ic.modality_index("thermal", "query.txt:3")
    from kdem_tf.data import schema

    with pytest.raises(ValueError, match="cam1/0001/0001.jpg: modality"):
        schema.make_example(image=b"", person_id=1, label=0, camera=1, modality="rgb", split="train",
                            path="cam1/0001/0001.jpg", height=1, width=1)


def test_resize_passes_the_model_size_through_and_low_passes_when_downscaling():
    contract = ImageContract((4, 4))
    same = np.random.default_rng(0).integers(0, 256, (4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(contract.resize(same).numpy(), same)  # no resampling at the size
    # A one-pixel checkerboard halved: antialiasing averages it to grey; plain sampling would not.
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255.0)[..., None].repeat(3, axis=2)
    out = contract.resize(checker).numpy()
    assert out.shape == (4, 4, 3) and np.abs(out[1:3, 1:3] - 127.5).max() < 20.0
    aliased = tf.image.resize(checker, (4, 4), "nearest").numpy()
    assert np.abs(aliased - 127.5).min() > 100.0  # what the contract avoids
    assert out.min() >= 0.0 and out.max() <= 255.0  # lanczos overshoot is clipped


def test_bare_size_means_the_pre_contract_normalisation():
    assert ic.as_contract((64, 32)) == ImageContract((64, 32), "torchvision")
    contract = ImageContract((64, 32), "caffe")
    assert ic.as_contract(contract) is contract
    with pytest.raises(ContractError, match="image_size"):
        ImageContract((0, 32))
