"""The constants the paper and AGW fix, each written out here as a number from the paper or AGW's code
(not read from kdem_tf), and checked where the network and the losses actually use them: changing one
in the code (GeM's p, a loss weight, the BN-neck, the schedule, a protocol rule) fails here.

Sources: AGW (mangye16/Cross-Modal-Re-ID-baseline): model.py `GeneralizedMeanPoolingP` (p=3, eps=1e-6),
`bottleneck = nn.BatchNorm1d(2048)` with its bias frozen, `classifier = nn.Linear(2048, n, bias=False)`
initialised N(0, 0.001); train.py (SGD lr 0.1, momentum 0.9, nesterov, weight decay 5e-4, warm-up 10
epochs then x0.1 at 20 and x0.01 at 50, 80 epochs, 8 ids x 4 images, 288x144). KDEM (Shan et al.
2022) Eq. 11 and Sec. 4.1: L = L_id + L_wrt + L_div + 0.1 L_con.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from kdem_tf import config as config_lib
from kdem_tf.config import ModelConfig
from kdem_tf.model import build_kdem_models
from kdem_tf.model.losses import (consistency_loss, diversity_loss, identity_loss, total_loss,
                                  weighted_regularized_triplet)
from tests.conftest import TEST_STAGE_BLOCKS

AGW_GEM_P = 3.0
AGW_GEM_EPS = 1e-6
PAPER_LOSS_WEIGHTS = (1.0, 1.0, 1.0, 0.1)  # λ_id, λ_wrt, λ_div, λ_con


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    train_model, _ = build_kdem_models(ModelConfig(backbone_weights="none", width=0.25, non_local=False,
                                                   stage_blocks=TEST_STAGE_BLOCKS), 5, (64, 32))
    return train_model


def test_the_network_pools_with_gem_p3(model):
    """The built network's pooling layer against the generalised mean with AGW's p=3 in numpy."""
    features = np.random.default_rng(1).uniform(0.0, 2.0, size=(2, 4, 2, 8)).astype("float32")
    features[0, 0, 0, 0] = 0.0  # clamped at eps, as AGW's x.clamp(min=eps)
    got = model.get_layer("gem_pooling")(features).numpy()
    want = np.mean(np.maximum(features, AGW_GEM_EPS) ** AGW_GEM_P, axis=(1, 2)) ** (1.0 / AGW_GEM_P)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(got, features.mean(axis=(1, 2)), rtol=1e-3)  # p=1 (average) would differ


def test_the_bn_neck_and_classifier_are_agws(model):
    neck = model.get_layer("bn_neck")
    assert (neck.center, neck.scale, neck.epsilon, neck.momentum) == (False, True, 1e-5, 0.9)  # torch momentum 0.1
    classifier = model.get_layer("classifier")
    assert classifier.use_bias is False
    assert abs(float(np.std(classifier.kernel.numpy())) - 0.001) < 0.0003


def test_the_total_loss_weighs_the_terms_as_eq_11():
    rng = np.random.default_rng(2)
    b, d, n = 4, 6, 3
    outputs = {f"pooled_{s}": tf.constant(rng.normal(size=(b, d)), tf.float32) for s in "vit"}
    outputs.update({f"logits_{s}": tf.constant(rng.normal(size=(b, n)), tf.float32) for s in "vit"})
    factors = rng.uniform(0.2, 0.8, size=(b, 1))
    outputs["influence_factors"] = tf.constant(np.hstack([factors, 1 - factors]), tf.float32)
    labels = tf.constant([0, 1, 2, 0])
    got = total_loss(outputs, labels, labels)
    all_labels = tf.concat([labels] * 3, 0)
    terms = (identity_loss(tf.concat([outputs[f"logits_{s}"] for s in "vit"], 0), all_labels),
             weighted_regularized_triplet(tf.concat([outputs[f"pooled_{s}"] for s in "vit"], 0), all_labels)[0],
             diversity_loss(outputs["influence_factors"]),
             consistency_loss(outputs["pooled_v"], outputs["pooled_i"], outputs["pooled_t"],
                              outputs["influence_factors"]))
    want = sum(w * float(t) for w, t in zip(PAPER_LOSS_WEIGHTS, terms))
    assert float(got["total"]) == pytest.approx(want, rel=1e-5)
    assert float(terms[3]) > 0.0  # the consistency term is there to be weighed


def test_the_paper_preset_is_agws_schedule_and_kdems_weights():
    config = config_lib.load_config("paper")
    loss, optim, data = config.loss, config.optim, config.data
    assert (loss.id_weight, loss.wrt_weight, loss.div_weight, loss.con_weight) == PAPER_LOSS_WEIGHTS
    assert (optim.base_lr, optim.momentum, optim.nesterov, optim.weight_decay) == (0.1, 0.9, True, 5e-4)
    assert (optim.warmup_epochs, tuple(optim.milestones), optim.epochs) == (10, (20, 50), 80)
    assert (tuple(data.image_size), data.num_identities, data.num_instances) == ((288, 144), 8, 4)
    assert config.model.gem and config.model.bn_neck and config.model.non_local and config.model.last_stride == 1
    assert tuple(config.model.stage_blocks) == (3, 4, 6, 3) and config.model.width == 1.0
