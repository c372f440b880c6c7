"""The epsilon `FusedBatchNormalization` applies on this TensorFlow: the one asked for (1e-5), not a 1.001e-5 floor.

Where the variance is small against ε the two differ visibly; the inputs here are BN inputs of unit
normalised size with variances in [0, 1e-5]. `pytest -s` prints the measured errors (docs/training.md
row 12 quotes them).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from kdem_tf.model.fused_batch_norm import FusedBatchNormalization

CHANNELS = 64


def _reference(x, mean, variance, gamma, beta, epsilon):
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _errors(training: bool):
    rng = np.random.default_rng(0)
    variance = rng.uniform(0.0, 1e-5, CHANNELS)
    # means of the size of the spread: float32 batch statistics stay accurate (training mode computes them)
    mean, gamma, beta = rng.normal(0, 1e-3, CHANNELS), rng.uniform(0.5, 1.5, CHANNELS), rng.normal(size=CHANNELS)
    x = mean + np.sqrt(variance + 1e-5) * rng.normal(size=(4, 9, 5, CHANNELS))
    # the float32 values the layer gets, as float64: the reference sees exactly the layer's inputs
    x, variance, mean, gamma, beta = (np.float64(np.float32(a)) for a in (x, variance, mean, gamma, beta))
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    layer.build(x.shape)
    layer.set_weights([a.astype(np.float32) for a in (gamma, beta, mean, variance)])
    ours = layer(tf.constant(x, tf.float32), training=training).numpy().astype(np.float64)
    if training:  # batch statistics (biased variance) normalise in training
        mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    return {epsilon: float(np.max(np.abs(ours - _reference(x, mean, variance, gamma, beta, epsilon))))
            for epsilon in (1e-5, 1.001e-5)}


def test_fused_batch_norm_uses_the_epsilon_it_is_given():
    for training in (False, True):
        errors = _errors(training)
        print(f"training={training}: max |fused - NumPy(eps)| = " +
              ", ".join(f"{error:.1e} at eps {epsilon}" for epsilon, error in errors.items()))
        assert errors[1e-5] < 5e-6 < 1e-4 < errors[1.001e-5]
