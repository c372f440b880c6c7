"""Generalized-mean (GeM) global pooling."""
from __future__ import annotations

import keras
from keras import ops

from kdem_tf.architecture import GEM_P


@keras.saving.register_keras_serializable(package="kdem_tf")
class GeMPooling(keras.layers.Layer):
    """Generalized-mean pooling over the spatial axes: (mean_hw clip(x, eps)^p)^(1/p).

    p=1 is average pooling, p→∞ max pooling; AGW uses a fixed p=3. The clamp at
    `eps` keeps the fractional power differentiable (features are post-ReLU, so
    it only touches exact zeros). Under mixed precision, build the layer with
    `dtype="float32"` (as `build_kdem_models` does): x^3 overflows float16.

    Args:
        p: the norm exponent (3.0 as AGW).
        eps: lower clamp of the inputs.
        trainable_p: learn p (Radenović et al.) instead of fixing it.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:
    >>> pooling = GeMPooling(p=3.0)
    >>> tuple(pooling(keras.ops.ones((2, 18, 9, 2048))).shape)
    (2, 2048)

    Reference:
        Radenović et al., "Fine-tuning CNN Image Retrieval with No Human
        Annotation", TPAMI 2018; AGW (Ye et al., TPAMI 2021) `gm_pool`.
    """

    def __init__(self, p: float = GEM_P, eps: float = 1e-6, trainable_p: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.p = float(p)
        self.eps = float(eps)
        self.trainable_p = bool(trainable_p)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        if self.trainable_p:
            self.p_weight = self.add_weight(
                name="p", shape=(), initializer=keras.initializers.Constant(self.p), trainable=True
            )
        self.built = True

    def call(self, inputs):
        p = ops.cast(self.p_weight, inputs.dtype) if self.trainable_p else self.p
        clipped = ops.maximum(inputs, self.eps)
        return ops.power(ops.mean(ops.power(clipped, p), axis=(1, 2)), 1.0 / p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p, "eps": self.eps, "trainable_p": self.trainable_p})
        return config
