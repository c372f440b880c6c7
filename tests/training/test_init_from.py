"""`kdem_tf.train --init-from RUN_DIR|CHECKPOINT` (kdem_tf.model.init_from): the weights after loading are the
source's, the KDEM layer keeps its initialisation, mismatches are named."""
from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdem_tf import config as config_lib
from kdem_tf.image_contract import ImageContract
from kdem_tf.model.init_from import InitFromError, TRANSFERRED_LAYERS, init_from
from kdem_tf.architecture import ABLATION_ROWS
from kdem_tf.train import main as train_main
from kdem_tf.training.models import build_models
from tests.conftest import AGW_TINY_CLASSES, agw_tiny_state
from tests.training.conftest import train_args

TINY = config_lib.load_config("tiny")
CONTRACT = ImageContract.from_config(TINY)


def _kdem_train_model(num_classes=AGW_TINY_CLASSES, config=TINY):
    keras.utils.set_random_seed(7)
    train_model, _ = build_models(config, num_classes, ABLATION_ROWS["full"], tf.distribute.get_strategy())
    return train_model


def _values(layer):
    return [keras.ops.convert_to_numpy(v).copy() for v in layer.weights]


def _assert_same(layer_a, layer_b):
    values_a, values_b = _values(layer_a), _values(layer_b)
    assert len(values_a) == len(values_b) > 0
    for a, b in zip(values_a, values_b):
        np.testing.assert_array_equal(a, b)


def test_an_imported_run_gives_every_weight_and_the_kdem_layer_stays_fresh(agw_tiny_run):
    _, run = agw_tiny_run
    train_model = _kdem_train_model()
    kdem_before = _values(train_model.get_layer("kdem"))
    trunk_before = _values(train_model.get_layer("trunk"))
    message = init_from(run, train_model, CONTRACT)
    assert "classifier from" in message and "KDEM layer fresh" in message
    source = keras.saving.load_model(os.path.join(run, "inference_model.keras"))
    for name in TRANSFERRED_LAYERS:
        _assert_same(train_model.get_layer(name), source.get_layer(name))
    assert any(not np.array_equal(a, b) for a, b in zip(trunk_before, _values(train_model.get_layer("trunk"))))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(train_model.get_layer("classifier").kernel),
                                  np.load(os.path.join(run, "classifier.npy")))
    for before, after in zip(kdem_before, _values(train_model.get_layer("kdem"))):
        np.testing.assert_array_equal(before, after)


def test_an_agw_checkpoint_file_gives_agws_tensors_and_a_fresh_classifier_for_other_identities(agw_tiny_run):
    checkpoint, _ = agw_tiny_run
    train_model = _kdem_train_model(num_classes=8)
    classifier_before = _values(train_model.get_layer("classifier"))
    message = init_from(checkpoint, train_model, CONTRACT)
    assert "classifier fresh" in message and "4 classes" in message
    state = agw_tiny_state()
    trunk = train_model.get_layer("trunk")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(trunk.get_layer("conv3_block1_2_conv").kernel),
                                  state["base_resnet.base.layer2.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(trunk.get_layer("conv4_block1_non_local").g.kernel),
                                  state["NL_3.0.g.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(train_model.get_layer("infrared_stem")
                                                             .get_layer("conv1_bn").moving_variance),
                                  state["thermal_module.thermal.bn1.running_var"])
    np.testing.assert_array_equal(_values(train_model.get_layer("classifier"))[0], classifier_before[0])


def test_another_width_and_other_pixels_are_refused_by_name(agw_tiny_run):
    _, run = agw_tiny_run
    wider = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, width=0.5))
    with pytest.raises(InitFromError, match=r"conv1_conv/kernel has shape \[7, 7, 3, 16\]; this model expects "
                                            r"\[7, 7, 3, 32\]"):
        init_from(run, _kdem_train_model(config=wider), CONTRACT)
    with pytest.raises(InitFromError, match=r"trained on 'torchvision'-normalised images, this run feeds 'caffe'"):
        init_from(run, _kdem_train_model(), ImageContract((64, 32), "caffe"))
    with pytest.raises(InitFromError, match="no such run folder or checkpoint file"):
        init_from(run + "-missing", _kdem_train_model(), CONTRACT)


def test_train_cli_init_from_starts_from_the_imported_weights(agw_tiny_run, tfrecords, tmp_path, capsys):
    _, run = agw_tiny_run
    out = str(tmp_path / "kdem")
    assert train_main(train_args(tfrecords, out, "--set", "model.non_local=true", "--init-from", run,
                                 "--max-steps", "0")) == 0
    assert "init from: " in capsys.readouterr().out
    saved = config_lib.from_yaml_text(open(os.path.join(out, "config.yaml")).read())
    assert saved.model.init_from == run
    ours = keras.saving.load_model(os.path.join(out, "inference_model.keras"))
    source = keras.saving.load_model(os.path.join(run, "inference_model.keras"))
    for name in TRANSFERRED_LAYERS:
        _assert_same(ours.get_layer(name), source.get_layer(name))


def test_the_tfx_trainer_takes_init_from_as_a_config_override(agw_tiny_run, tfrecords, tmp_path):
    """The TFX Trainer's run_fn (pipeline/trainer_module.py) gets `--set model.init_from=...` through its
    custom_config overrides: one step from the imported weights, then its SavedModel export."""
    import json
    import types

    from pipeline import trainer_module

    _, run = agw_tiny_run
    fn_args = types.SimpleNamespace(
        train_files=[os.path.join(tfrecords, "Split-train", "*")], train_steps=1,
        model_run_dir=str(tmp_path / "model_run"), serving_model_dir=str(tmp_path / "serving"),
        custom_config={"dataset": "sysu", "preset": "tiny", "verbose": 0,
                       "overrides": [f"model.init_from={run}", "mixed_precision=float32"]})
    trainer_module.run_fn(fn_args)
    assert json.loads((tmp_path / "model_run" / "train_summary.json").read_text())["steps"] == 1
    assert (tmp_path / "serving" / "saved_model.pb").exists()
    trained = keras.saving.load_model(str(tmp_path / "model_run" / "inference_model.keras")).get_layer("trunk")
    source = keras.saving.load_model(os.path.join(run, "inference_model.keras")).get_layer("trunk")
    # One SGD step away from the source's kernels (measured correlation 0.94 and above; an independent
    # initialisation correlates ~0 with them): the step started from the imported weights.
    for name in ("conv2_block1_1_conv", "conv5_block1_3_conv"):
        a, b = (keras.ops.convert_to_numpy(model.get_layer(name).kernel).ravel() for model in (trained, source))
        assert not np.array_equal(a, b) and np.corrcoef(a, b)[0, 1] > 0.5, name
