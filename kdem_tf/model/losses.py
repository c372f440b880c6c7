"""The four KDEM training losses (paper Eq. 2, 3-4, 7, 8) and their sum (Eq. 11).

Pure functions of tensors (TensorFlow backend). Every function casts its inputs to
float32 so they are safe under mixed precision. Shapes: B = pairs in the batch,
S = number of streams (2 without KDEM: v, i; 3 with it: v, i, t), D = 2048.
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import tensorflow as tf

from kdem_tf.config import LossConfig

# λ1..λ4 of Eq. 11: identity, WRT, diversity, consistency (paper Sec. 4.1), the config's defaults (LossConfig).
LOSS_WEIGHTS = tuple(getattr(LossConfig(), f"{name}_weight") for name in ("id", "wrt", "div", "con"))
DIVERSITY_EPS = 1e-8  # std = sqrt(var + eps): finite gradient when all factors are equal
CONSISTENCY_EPS = 1e-8  # ||x|| = sqrt(sum x^2 + eps): finite gradient at x = 0
STREAMS = ("v", "i", "t")


def identity_loss(logits, labels):
    """Softmax cross-entropy averaged over samples (Eq. 2).

    Args:
        logits: [N, num_classes] (N = S*B, all streams concatenated).
        labels: [N] integer identity labels.

    Returns:
        Scalar float32.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.int32)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


def pairwise_euclidean_distance(features):
    """[N, D] -> [N, N] Euclidean distances, sqrt(clip(d^2, 1e-12)) as AGW's pdist_torch."""
    features = tf.cast(features, tf.float32)
    squared_norms = tf.reduce_sum(tf.square(features), axis=1, keepdims=True)  # [N, 1]
    squared = squared_norms + tf.transpose(squared_norms) - 2.0 * tf.matmul(features, features, transpose_b=True)
    return tf.sqrt(tf.maximum(squared, 1e-12))


def _softmax_weights(distances, mask):
    """AGW's softmax_weights: a softmax over the masked entries of each row ([N, N])."""
    row_max = tf.reduce_max(distances * mask, axis=1, keepdims=True)
    exponentials = tf.exp(distances - row_max)
    normaliser = tf.reduce_sum(exponentials * mask, axis=1, keepdims=True) + 1e-6  # avoid 0/0
    return exponentials * mask / normaliser


def weighted_regularized_triplet(features, labels) -> Tuple[tf.Tensor, tf.Tensor]:
    """Weighted regularised triplet loss (Eq. 3-4), exactly AGW's TripletLoss_WRT.

    Every sample is an anchor; its positive distance is the softmax(d)-weighted mean
    of its positive distances (the anchor itself included, at distance ~1e-6, as in
    AGW), its negative distance the softmax(-d)-weighted mean of its negative
    distances; the loss is softplus(d_pos - d_neg) (SoftMarginLoss with y = 1),
    averaged over anchors. Mining is within the given batch only.

    Args:
        features: [N, D] features (the pooled features of all streams concatenated).
        labels: [N] integer labels.

    Returns:
        (loss, precision): scalar float32 loss, and the fraction of anchors whose
        weighted negative distance is >= the weighted positive one.
    """
    distances = pairwise_euclidean_distance(features)
    labels = tf.reshape(tf.cast(labels, tf.int32), (-1, 1))
    is_positive = tf.cast(tf.equal(labels, tf.transpose(labels)), tf.float32)
    is_negative = 1.0 - is_positive
    positive_distances = distances * is_positive
    negative_distances = distances * is_negative
    positive_weights = _softmax_weights(positive_distances, is_positive)
    negative_weights = _softmax_weights(-negative_distances, is_negative)
    furthest_positive = tf.reduce_sum(positive_distances * positive_weights, axis=1)
    closest_negative = tf.reduce_sum(negative_distances * negative_weights, axis=1)
    loss = tf.reduce_mean(tf.nn.softplus(furthest_positive - closest_negative))
    precision = tf.reduce_mean(tf.cast(closest_negative >= furthest_positive, tf.float32))
    return loss, precision


def diversity_loss(influence_factors):
    """L_div = -(std(mi_v) + std(mi_i)) over the batch (Eq. 7).

    std is the population standard deviation sqrt(var + 1e-8): the eps keeps the
    gradient finite when all factors are equal (d sqrt(x)/dx is infinite at 0).

    Args:
        influence_factors: [B, 2] = (mi_v, mi_i) per pair.

    Returns:
        Scalar float32 (<= 0).
    """
    influence_factors = tf.cast(influence_factors, tf.float32)
    variance = tf.math.reduce_variance(influence_factors, axis=0)  # [2]
    return -tf.reduce_sum(tf.sqrt(variance + DIVERSITY_EPS))


def consistency_loss(pooled_v, pooled_i, pooled_t, influence_factors, detach_factors: bool = False):
    """L_con = mean over pairs of sum_m mi_m * ||f(F_m) - f(F_t)||_2 (Eq. 8).

    f is the shared trunk (stages 1-4) followed by the global pooling, i.e. the
    pooled features before the BN-neck. The norm is sqrt(sum of squares + 1e-8) so
    the gradient is finite where f(F_m) = f(F_t) (e.g. when F_v = F_i). Eq. 8 writes
    the (unsquared) L2 norm, which we follow; the paper's gradient (Eq. 9-10, factor
    2, no division by the norm) is that of the squared norm instead. By default the
    factors mi_m are not detached: they receive gradient from this loss as well.
    `detach_factors=True` (beyond the paper, the collapse study) makes them constants
    as the weights of this sum; they still get L_con's gradient through pooled_t
    (F_t = mi_v F_v + mi_i F_i).

    Args:
        pooled_v, pooled_i, pooled_t: [B, D] pooled features of pair k's visible,
            infrared and knowledge-enhanced streams.
        influence_factors: [B, 2] = (mi_v, mi_i).
        detach_factors: stop the gradient to the factors through this loss.

    Returns:
        Scalar float32.
    """
    pooled_v, pooled_i, pooled_t, influence_factors = (
        tf.cast(tensor, tf.float32) for tensor in (pooled_v, pooled_i, pooled_t, influence_factors)
    )
    if detach_factors:
        influence_factors = tf.stop_gradient(influence_factors)
    distance_v = tf.sqrt(tf.reduce_sum(tf.square(pooled_v - pooled_t), axis=1) + CONSISTENCY_EPS)
    distance_i = tf.sqrt(tf.reduce_sum(tf.square(pooled_i - pooled_t), axis=1) + CONSISTENCY_EPS)
    return tf.reduce_mean(influence_factors[:, 0] * distance_v + influence_factors[:, 1] * distance_i)


def total_loss(
    outputs: Mapping[str, tf.Tensor],
    label_v,
    label_i,
    loss_weights: Tuple[float, float, float, float] = LOSS_WEIGHTS,
    use_diversity_loss: bool = True,
    use_consistency_loss: bool = True,
    con_detach_factors: bool = False,
) -> Dict[str, tf.Tensor]:
    """L_all = λ1 L_id + λ2 L_wrt + λ3 L_div + λ4 L_con (Eq. 11).

    L_id and L_wrt are computed on all streams concatenated (v, i and, with KDEM,
    t; stream t of pair k has pair k's identity). L_div and L_con need KDEM (the
    `influence_factors` output); without it, or when switched off (the ablation rows
    of Table 3), they are reported as 0 and do not enter the total.

    Args:
        outputs: the train model's output dict: `pooled_{v,i}` [B, D],
            `logits_{v,i}` [B, num_classes], and with KDEM `pooled_t`, `logits_t`,
            `influence_factors` [B, 2].
        label_v, label_i: [B] labels of the visible and infrared images (equal for
            a pair, but both are used as given).
        loss_weights: (λ1, λ2, λ3, λ4).
        use_diversity_loss, use_consistency_loss: ablation switches.
        con_detach_factors: the factors as constants in L_con (`consistency_loss`).

    Returns:
        Dict of scalar float32: id_loss, wrt_loss, div_loss, con_loss, total,
        wrt_precision, id_accuracy (top-1 over all streams).
    """
    has_kdem = "influence_factors" in outputs
    streams = STREAMS if has_kdem else STREAMS[:2]
    stream_labels = {"v": label_v, "i": label_i, "t": label_v}
    labels = tf.concat([tf.cast(tf.reshape(stream_labels[s], (-1,)), tf.int32) for s in streams], axis=0)
    logits = tf.concat([tf.cast(outputs[f"logits_{s}"], tf.float32) for s in streams], axis=0)
    pooled = tf.concat([tf.cast(outputs[f"pooled_{s}"], tf.float32) for s in streams], axis=0)

    id_term = identity_loss(logits, labels)
    wrt_term, wrt_precision = weighted_regularized_triplet(pooled, labels)
    zero = tf.constant(0.0, tf.float32)
    div_term = zero
    con_term = zero
    if has_kdem and use_diversity_loss:
        div_term = diversity_loss(outputs["influence_factors"])
    if has_kdem and use_consistency_loss:
        con_term = consistency_loss(
            outputs["pooled_v"], outputs["pooled_i"], outputs["pooled_t"], outputs["influence_factors"],
            detach_factors=con_detach_factors,
        )
    lambda_id, lambda_wrt, lambda_div, lambda_con = (float(weight) for weight in loss_weights)
    total = lambda_id * id_term + lambda_wrt * wrt_term + lambda_div * div_term + lambda_con * con_term
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    id_accuracy = tf.reduce_mean(tf.cast(tf.equal(predictions, labels), tf.float32))
    return {
        "id_loss": id_term,
        "wrt_loss": wrt_term,
        "div_loss": div_term,
        "con_loss": con_term,
        "total": total,
        "wrt_precision": wrt_precision,
        "id_accuracy": id_accuracy,
    }
