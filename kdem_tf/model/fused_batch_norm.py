"""BatchNormalization on TensorFlow's fused kernel (what tf.keras 2 did by default)."""
from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="kdem_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by one fused TensorFlow op.

    Keras 3 normalises with separate moments / subtract / multiply ops and upcasts
    bfloat16 inputs to float32 first; on CPU that is a large share of a ResNet-50
    training step. This layer keeps Keras' variables, names, config and semantics
    (same gamma, beta, moving_mean, moving_variance, so ImageNet weights and
    checkpoints load unchanged) and, for 4-D channels-last inputs without a mask,
    calls `FusedBatchNormV3` instead (oneDNN on CPU, cuDNN on GPU), in the input's
    dtype with float32 statistics. Anything else falls back to the Keras code.

    One numerical difference: in training the fused op updates the moving variance
    with the unbiased batch variance (x N/(N-1), N = B*H*W), as PyTorch and cuDNN
    do; Keras 3 uses the biased one. Normalisation itself uses the biased variance
    in both. The epsilon is the one given: TF 2.16's wrapper applies no floor (measured on CPU in
    tests/model/test_fused_batch_norm_epsilon.py; not measured on a GPU).

    Args:
        **kwargs: the arguments of `keras.layers.BatchNormalization`.

    Example:
    >>> bn = FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    >>> tuple(bn(keras.ops.ones((2, 4, 4, 8)), training=True).shape)
    (2, 4, 4, 8)

    Reference:
        Ioffe & Szegedy, "Batch Normalization", ICML 2015;
        `tf.compat.v1.nn.fused_batch_norm`.
    """

    def _can_fuse(self, inputs, mask) -> bool:
        return (
            mask is None
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.backend() == "tensorflow"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._can_fuse(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones((channels,), "float32")
        beta = self.beta if self.center else tf.zeros((channels,), "float32")
        gamma, beta = tf.cast(gamma, "float32"), tf.cast(beta, "float32")
        inputs = tf.cast(inputs, self.compute_dtype)
        is_training = bool(training and self.trainable)
        # Training: batch statistics, and the moving averages come back updated
        # (exponential_avg_factor); inference: the moving statistics.
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            gamma,
            beta,
            mean=tf.cast(self.moving_mean, "float32"),
            variance=tf.cast(self.moving_variance, "float32"),
            epsilon=self.epsilon,
            is_training=is_training,
            exponential_avg_factor=1.0 - self.momentum if is_training else 1.0,
        )
        if is_training:
            self.moving_mean.assign(mean)
            self.moving_variance.assign(variance)
        return outputs
