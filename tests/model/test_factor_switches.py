"""The influence-factor collapse switches (beyond the paper): factors detached in L_con and a softmax
temperature; the paper preset keeps Eq. 5 and Eq. 8 as written."""
import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdem_tf import config as config_lib
from kdem_tf.config import ModelConfig
from kdem_tf.model import KDEMLayer
from kdem_tf.model.losses import consistency_loss, total_loss
from kdem_tf.model.model import build_kdem_models
from kdem_tf.model.trainer import KDEMTrainer


def _pairs(seed=0, batch=4, dim=6):
    rng = np.random.default_rng(seed)
    pooled = [tf.constant(rng.normal(size=(batch, dim)), tf.float32) for _ in range(3)]
    factors = tf.constant(rng.dirichlet((2.0, 2.0), size=batch), tf.float32)
    return pooled, factors


def _factor_gradient(detach: bool):
    (pooled_v, pooled_i, pooled_t), factors = _pairs()
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([factors, pooled_t])
        loss = consistency_loss(pooled_v, pooled_i, pooled_t, factors, detach_factors=detach)
    return loss, tape.gradient(loss, factors), tape.gradient(loss, pooled_t)


def test_detached_factors_get_no_gradient_through_l_con_and_the_value_is_unchanged():
    attached_loss, attached_factor_grad, attached_feature_grad = _factor_gradient(False)
    detached_loss, detached_factor_grad, detached_feature_grad = _factor_gradient(True)
    assert float(tf.reduce_max(tf.abs(attached_factor_grad))) > 1e-3  # Eq. 8 as written: the factors learn
    assert detached_factor_grad is None or float(tf.reduce_max(tf.abs(detached_factor_grad))) == 0.0
    np.testing.assert_allclose(float(detached_loss), float(attached_loss), rtol=1e-7)
    np.testing.assert_allclose(detached_feature_grad.numpy(), attached_feature_grad.numpy(), rtol=1e-6)


def test_total_loss_passes_the_switch_to_l_con():
    (pooled_v, pooled_i, pooled_t), factors = _pairs(seed=1)
    outputs = {"pooled_v": pooled_v, "pooled_i": pooled_i, "pooled_t": pooled_t, "influence_factors": factors,
               **{f"logits_{s}": tf.zeros((4, 3)) for s in "vit"}}
    labels = tf.constant([0, 1, 2, 0])
    gradients = {}
    for detach in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(factors)
            losses = total_loss(outputs, labels, labels, use_diversity_loss=False, con_detach_factors=detach)
        gradients[detach] = tape.gradient(losses["total"], factors)
    assert float(tf.reduce_max(tf.abs(gradients[False]))) > 1e-4
    assert gradients[True] is None or float(tf.reduce_max(tf.abs(gradients[True]))) == 0.0


@pytest.mark.parametrize("temperature", [0.5, 4.0])
def test_temperature_gives_softmax_of_logits_over_t(temperature):
    rng = np.random.default_rng(3)
    f_v = rng.normal(size=(5, 4, 2, 3)).astype("float32")
    f_i = rng.normal(loc=0.3, size=(5, 4, 2, 3)).astype("float32")
    layer = KDEMLayer(fc_units=6, mlp_units=(5,), temperature=temperature)
    layer.build([f_v.shape, f_i.shape])
    layer.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.get_weights()])
    factors = keras.ops.convert_to_numpy(layer([f_v, f_i])[1]).astype(np.float64)

    def pooled(f):
        return np.concatenate([f.mean(axis=(1, 2)), f.max(axis=(1, 2))], axis=1).astype(np.float64)

    def dense(sublayer, x):
        kernel, bias = (w.astype(np.float64) for w in sublayer.get_weights())
        return x @ kernel + bias

    hidden = dense(layer.fc_visible, pooled(f_v)) + dense(layer.fc_infrared, pooled(f_i))
    hidden = np.maximum(dense(layer.mlp_layers[0], hidden), 0.0)
    logits = dense(layer.factor_logits, hidden)

    def softmax(x):
        x = np.exp(x - x.max(axis=1, keepdims=True))
        return x / x.sum(axis=1, keepdims=True)

    np.testing.assert_allclose(factors, softmax(logits / temperature), rtol=1e-4, atol=1e-6)
    assert np.abs(softmax(logits) - softmax(logits / temperature)).max() > 1e-2  # T changed the factors
    assert layer.get_config()["temperature"] == temperature
    assert KDEMLayer.from_config(layer.get_config()).temperature == temperature


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        KDEMLayer(temperature=0.0)
    with pytest.raises(config_lib.ConfigError, match="model.factor_temperature must be > 0"):
        config_lib.load_config("demo", overrides=["model.factor_temperature=-1"])


def test_paper_and_demo_presets_keep_the_paper_equations():
    for preset in ("paper", "demo", "tiny"):
        config = config_lib.load_config(preset)
        assert config.model.factor_temperature == 1.0
        assert config.loss.con_detach_factors is False
    fields = {f.name: f.default for f in dataclasses.fields(config_lib.ModelConfig)}
    assert fields["factor_temperature"] == 1.0
    assert {f.name: f.default for f in dataclasses.fields(config_lib.LossConfig)}["con_detach_factors"] is False
    overridden = config_lib.load_config("demo", overrides=["loss.con_detach_factors=true",
                                                           "model.factor_temperature=4"])
    assert overridden.loss.con_detach_factors is True and overridden.model.factor_temperature == 4.0
    text = config_lib.to_yaml(overridden)
    assert config_lib.from_yaml_text(text) == overridden


def test_switches_reach_the_train_model_and_the_trainer():
    # Only L_con in the objective: detaching removes its direct term on the factors (they still get
    # gradient through F_t = mi_v F_v + mi_i F_i), so the factor MLP's gradient changes.
    keras.utils.set_random_seed(0)
    train_model, _ = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=0.25, stage_blocks=(1, 1, 1, 1), factor_temperature=3.0), 3, (64, 32))
    assert train_model.get_layer("kdem").temperature == 3.0
    rng = np.random.default_rng(0)
    data = ({"visible": tf.constant(rng.normal(size=(4, 64, 32, 3)), tf.float32),
             "infrared": tf.constant(rng.normal(size=(4, 64, 32, 3)), tf.float32)},
            {"label_v": tf.constant([0, 1, 2, 0]), "label_i": tf.constant([0, 1, 2, 0])})
    kernel = train_model.get_layer("kdem").factor_logits.kernel
    gradients = {}
    for detach in (False, True):
        trainer = KDEMTrainer(train_model, loss_weights=(0.0, 0.0, 0.0, 1.0), con_detach_factors=detach)
        with tf.GradientTape() as tape:
            _, losses = trainer.compute_losses(data, training=False)
        gradients[detach] = tape.gradient(losses["total"], kernel).numpy()
    assert np.abs(gradients[False]).max() > 0 and np.abs(gradients[True]).max() > 0
    assert np.abs(gradients[False] - gradients[True]).max() > 1e-3 * np.abs(gradients[False]).max()
