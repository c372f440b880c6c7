"""The KDEM losses against independent float64 NumPy computations."""
import math

import numpy as np
import pytest
import tensorflow as tf

from kdem_tf.model.losses import (
    LOSS_WEIGHTS,
    consistency_loss,
    diversity_loss,
    identity_loss,
    total_loss,
    weighted_regularized_triplet,
)

RTOL = 1e-5  # float32 TF vs float64 NumPy


def numpy_softplus(x):
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0.0)


def numpy_wrt(features, labels):
    """AGW's TripletLoss_WRT written out loop by loop, in float64."""
    n = len(features)
    dist = np.sqrt(np.maximum(((features[:, None, :] - features[None, :, :]) ** 2).sum(-1), 1e-12))
    losses, correct = [], []
    for a in range(n):
        pos = labels == labels[a]
        neg = ~pos
        d_ap = dist[a] * pos
        d_an = dist[a] * neg
        # softmax_weights(dist, mask): the max runs over dist*mask, zeros included.
        w_ap = np.exp(d_ap - np.max(d_ap * pos)) * pos
        w_ap /= w_ap.sum() + 1e-6
        w_an = np.exp(-d_an - np.max(-d_an * neg)) * neg
        w_an /= w_an.sum() + 1e-6
        furthest_positive = (d_ap * w_ap).sum()
        closest_negative = (d_an * w_an).sum()
        losses.append(numpy_softplus(furthest_positive - closest_negative))
        correct.append(closest_negative >= furthest_positive)
    return np.mean(losses), np.mean(correct)


def test_identity_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(12, 5)) * 3
    labels = rng.integers(0, 5, size=12)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    expected = -log_probs[np.arange(12), labels].mean()
    assert float(identity_loss(tf.constant(logits, tf.float32), tf.constant(labels))) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wrt_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 4)  # 3 ids x 4 samples, as v/i/t streams of 4 pairs
    features = rng.normal(size=(12, 16)) + labels[:, None] * 0.3
    loss, precision = weighted_regularized_triplet(tf.constant(features, tf.float32), tf.constant(labels))
    expected_loss, expected_precision = numpy_wrt(features, labels)
    assert float(loss) == pytest.approx(expected_loss, rel=RTOL)
    assert float(precision) == pytest.approx(expected_precision)


def test_wrt_hand_worked_points_on_a_line():
    # Points 0, 1, 3, 4 on a line; ids [a, a, b, b].
    # Anchor 0: positives at distances 0 (itself) and 1 -> softmax(d) weights (e^-1, 1)/(1 + e^-1),
    #   furthest_positive = 1/(1 + e^-1) = 0.7311; negatives at 3, 4 -> softmax(-d) weights
    #   (e^-3, e^-4)/(e^-3 + e^-4), closest_negative = (3 + 4/e)/(1 + 1/e) = 3.2689.
    # Anchor 1: same positive 0.7311; negatives at 2, 3 -> (2 + 3/e)/(1 + 1/e) = 2.2689.
    # Anchors 3 and 2 mirror 0 and 1. loss = (softplus(-2.5379) + softplus(-1.5379)) / 2
    #   = (0.0761 + 0.1947) / 2 = 0.1354; every anchor ranks correctly: precision 1.
    features = tf.constant([[0.0], [1.0], [3.0], [4.0]])
    labels = tf.constant([0, 0, 1, 1])
    loss, precision = weighted_regularized_triplet(features, labels)
    e = math.e
    positive = 1 / (1 + 1 / e)
    far_negative = (3 + 4 / e) / (1 + 1 / e)
    near_negative = (2 + 3 / e) / (1 + 1 / e)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = (softplus(positive - far_negative) + softplus(positive - near_negative)) / 2
    assert expected == pytest.approx(0.1354, abs=1e-4)
    assert float(loss) == pytest.approx(expected, abs=1e-5)  # AGW's 1e-6 terms are below this
    assert float(precision) == 1.0


def test_diversity_loss_matches_numpy():
    rng = np.random.default_rng(3)
    mi_v = rng.uniform(0.2, 0.8, size=8)
    factors = np.stack([mi_v, 1 - mi_v], axis=1)
    expected = -(np.sqrt(mi_v.var() + 1e-8) + np.sqrt((1 - mi_v).var() + 1e-8))
    assert float(diversity_loss(tf.constant(factors, tf.float32))) == pytest.approx(expected, rel=RTOL)


def test_consistency_loss_matches_numpy():
    rng = np.random.default_rng(4)
    pooled_v, pooled_i, pooled_t = (rng.normal(size=(6, 32)) for _ in range(3))
    mi_v = rng.uniform(size=6)
    factors = np.stack([mi_v, 1 - mi_v], axis=1)
    expected = np.mean(
        mi_v * np.linalg.norm(pooled_v - pooled_t, axis=1) + (1 - mi_v) * np.linalg.norm(pooled_i - pooled_t, axis=1)
    )
    args = [tf.constant(a, tf.float32) for a in (pooled_v, pooled_i, pooled_t, factors)]
    assert float(consistency_loss(*args)) == pytest.approx(expected, rel=RTOL)


def test_div_and_con_gradients_finite_at_uniform_factors():
    factors = tf.Variable(tf.fill((4, 2), 0.5))
    pooled = tf.Variable(tf.random.stateless_normal((4, 8), seed=(1, 2)))
    with tf.GradientTape(persistent=True) as tape:
        div = diversity_loss(factors)
        # f(F_v) = f(F_i) = f(F_t): the norm is at 0, where a plain sqrt has no gradient.
        con = consistency_loss(pooled, pooled, pooled, factors)
    for gradient in tape.gradient(div, [factors]) + tape.gradient(con, [factors, pooled]):
        assert np.all(np.isfinite(gradient.numpy()))
    assert float(div) == pytest.approx(-2e-4, rel=1e-3)  # -2 sqrt(1e-8)


def fake_outputs(rng, batch=4, classes=3, kdem=True):
    outputs = {}
    for stream in ("v", "i", "t") if kdem else ("v", "i"):
        outputs[f"pooled_{stream}"] = tf.constant(rng.normal(size=(batch, 8)), tf.float32)
        outputs[f"logits_{stream}"] = tf.constant(rng.normal(size=(batch, classes)), tf.float32)
    if kdem:
        mi_v = rng.uniform(size=batch)
        outputs["influence_factors"] = tf.constant(np.stack([mi_v, 1 - mi_v], 1), tf.float32)
    return outputs


def test_total_loss_is_the_weighted_sum_over_all_streams():
    rng = np.random.default_rng(5)
    outputs = fake_outputs(rng)
    labels = tf.constant([0, 1, 2, 0])
    losses = total_loss(outputs, labels, labels)
    all_labels = tf.concat([labels] * 3, 0)
    id_expected = identity_loss(tf.concat([outputs[f"logits_{s}"] for s in "vit"], 0), all_labels)
    wrt_expected, _ = weighted_regularized_triplet(tf.concat([outputs[f"pooled_{s}"] for s in "vit"], 0), all_labels)
    assert float(losses["id_loss"]) == pytest.approx(float(id_expected), rel=RTOL)
    assert float(losses["wrt_loss"]) == pytest.approx(float(wrt_expected), rel=RTOL)
    assert float(losses["div_loss"]) == pytest.approx(float(diversity_loss(outputs["influence_factors"])))
    terms = [losses[name] for name in ("id_loss", "wrt_loss", "div_loss", "con_loss")]
    expected_total = sum(weight * float(term) for weight, term in zip(LOSS_WEIGHTS, terms))
    assert float(losses["total"]) == pytest.approx(expected_total, rel=RTOL)
    assert LOSS_WEIGHTS == (1.0, 1.0, 1.0, 0.1)


@pytest.mark.parametrize(
    "kdem, use_div, use_con",
    [(False, True, True), (True, False, False), (True, True, False), (True, False, True), (True, True, True)],
)
def test_total_loss_ablation_switches_drop_the_right_terms(kdem, use_div, use_con):
    rng = np.random.default_rng(6)
    outputs = fake_outputs(rng, kdem=kdem)
    labels = tf.constant([0, 1, 2, 0])
    losses = total_loss(outputs, labels, labels, use_diversity_loss=use_div, use_consistency_loss=use_con)
    assert (float(losses["div_loss"]) != 0.0) == (kdem and use_div)
    assert (float(losses["con_loss"]) != 0.0) == (kdem and use_con)
    expected_total = (
        float(losses["id_loss"]) + float(losses["wrt_loss"]) + float(losses["div_loss"]) + 0.1 * float(losses["con_loss"])
    )
    assert float(losses["total"]) == pytest.approx(expected_total, rel=RTOL)
