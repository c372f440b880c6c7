"""The Knowledge-driven Enhanced Module (paper Sec. 3.3, Eq. 5-6)."""
from __future__ import annotations

from typing import Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kdem_tf")
class KDEMLayer(keras.layers.Layer):
    """Mixes the two modality-specific stem features into a knowledge-enhanced one.

    For each modality m in {v, i} the stem feature F_m [B, H, W, C] is pooled
    globally by average and by max and the two are concatenated ([B, 2C]). An FC
    layer maps each to `fc_units`; the two results are summed; an MLP and a
    2-way softmax give the modality influence factors (mi_v, mi_i), mi_v + mi_i = 1
    (Eq. 5). The output is F_t = mi_v * F_v + mi_i * F_i (Eq. 6).

    The FC is linear (Eq. 5 puts no activation between FC and the sum); the MLP's
    hidden layers use `activation`; its last layer is Dense(2) + softmax. That
    last Dense starts with small random weights (std 0.01) and zero bias, so the
    factors start near (0.5, 0.5) but vary a little across the batch: the
    diversity loss (a batch standard deviation) then has a non-zero gradient from
    the first step. The factors are computed in float32 under mixed precision.

    Args:
        fc_units: width of the FC applied to each modality's [avg; max] vector.
        mlp_units: hidden widths of the MLP before the 2-way output.
        shared_fc: one FC for both modalities (default) or one per modality; Eq. 5
            writes a single FC.
        activation: activation of the MLP hidden layers.
        temperature: the factors are softmax(logits / temperature); 1.0 is Eq. 5. Beyond the
            paper: a temperature above 1 flattens the softmax, so saturating it takes logits
            `temperature` times larger (the influence-factor collapse study, docs/training.md).
        **kwargs: standard `keras.layers.Layer` arguments.

    Call arguments:
        inputs: [F_v, F_i], two tensors of the same shape [B, H, W, C].

    Returns:
        (F_t [B, H, W, C], influence_factors [B, 2] float32 = (mi_v, mi_i)).

    Example:
    >>> kdem = KDEMLayer(fc_units=32, mlp_units=(16,))
    >>> f_v, f_i = keras.ops.ones((2, 8, 4, 64)), keras.ops.zeros((2, 8, 4, 64))
    >>> f_t, influence_factors = kdem([f_v, f_i])
    >>> tuple(f_t.shape), tuple(influence_factors.shape)
    ((2, 8, 4, 64), (2, 2))

    Reference:
        Shan et al., "A Knowledge-driven Enhanced Module for Visible-Infrared
        Person Re-Identification", ICANN 2022, Sec. 3.3.
    """

    def __init__(
        self,
        fc_units: int = 256,
        mlp_units: Sequence[int] = (128,),
        shared_fc: bool = True,
        activation: str = "relu",
        temperature: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.fc_units = int(fc_units)
        self.mlp_units = tuple(int(units) for units in mlp_units)
        self.shared_fc = bool(shared_fc)
        self.activation = activation

    def build(self, input_shape):
        visible_shape, infrared_shape = input_shape
        if tuple(visible_shape[1:]) != tuple(infrared_shape[1:]):
            raise ValueError(f"F_v and F_i must have the same shape, got {visible_shape} and {infrared_shape}")
        channels = int(visible_shape[-1])
        pooled_shape = (None, 2 * channels)
        if self.shared_fc:
            self.fc_visible = keras.layers.Dense(self.fc_units, name="fc", dtype=self.dtype_policy)
            self.fc_infrared = self.fc_visible
            self.fc_visible.build(pooled_shape)
        else:
            self.fc_visible = keras.layers.Dense(self.fc_units, name="fc_visible", dtype=self.dtype_policy)
            self.fc_infrared = keras.layers.Dense(self.fc_units, name="fc_infrared", dtype=self.dtype_policy)
            self.fc_visible.build(pooled_shape)
            self.fc_infrared.build(pooled_shape)
        self.mlp_layers = []
        width = self.fc_units
        for index, units in enumerate(self.mlp_units):
            layer = keras.layers.Dense(units, activation=self.activation, name=f"mlp_{index}", dtype=self.dtype_policy)
            layer.build((None, width))
            self.mlp_layers.append(layer)
            width = units
        self.factor_logits = keras.layers.Dense(
            2,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            bias_initializer="zeros",
            name="factor_logits",
            dtype="float32",  # the softmax and the losses on it stay in float32
        )
        self.factor_logits.build((None, width))
        self.built = True

    @staticmethod
    def _avg_max_pool(features):
        """[B, H, W, C] -> [B, 2C] = [global average; global max]."""
        return ops.concatenate([ops.mean(features, axis=(1, 2)), ops.max(features, axis=(1, 2))], axis=-1)

    def call(self, inputs):
        visible_features, infrared_features = inputs
        hidden = self.fc_visible(self._avg_max_pool(visible_features)) + self.fc_infrared(
            self._avg_max_pool(infrared_features)
        )
        for layer in self.mlp_layers:
            hidden = layer(hidden)
        logits = self.factor_logits(ops.cast(hidden, "float32"))
        if self.temperature != 1.0:
            logits = logits / self.temperature
        influence_factors = ops.softmax(logits, axis=-1)  # [B, 2]
        factors = ops.cast(influence_factors, visible_features.dtype)
        mi_visible = factors[:, 0][:, None, None, None]
        mi_infrared = factors[:, 1][:, None, None, None]
        enhanced_features = mi_visible * visible_features + mi_infrared * infrared_features
        return enhanced_features, influence_factors

    def compute_output_shape(self, input_shape):
        visible_shape = tuple(input_shape[0])
        return visible_shape, (visible_shape[0], 2)

    def compute_output_spec(self, inputs):
        visible = inputs[0]
        return (
            keras.KerasTensor(visible.shape, dtype=visible.dtype),
            keras.KerasTensor((visible.shape[0], 2), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "fc_units": self.fc_units,
                "mlp_units": list(self.mlp_units),
                "shared_fc": self.shared_fc,
                "activation": self.activation,
                "temperature": self.temperature,
            }
        )
        return config
