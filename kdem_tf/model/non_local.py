"""Non-local block (dot-product form) as used by AGW."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kdem_tf")
class NonLocalBlock(keras.layers.Layer):
    """Non-local block, dot-product ("f / N") form, starting as the identity.

    theta, phi and g are 1x1 convolutions to `inter_channels`; with N = H*W
    positions, `f = theta(x) phi(x)^T / N` ([B, N, N]), `y = f g(x)`, and the
    output is `z = BN(W(y)) + x` with W a 1x1 convolution back to C channels.
    The BN's gamma and beta start at zero so the block is the identity at
    initialisation and does not disturb the ImageNet-pretrained trunk.

    Cost: the [B, N, N] affinity matrix; N = 36*18 = 648 for conv3_x and
    18*9 = 162 for conv4_x at 288x144 input, small.

    Args:
        reduction: `inter_channels = C // reduction` (AGW's reduc_ratio=2; AGW's
            code actually computes `reduc_ratio // reduc_ratio` = 1 channel, a typo
            we do not reproduce).
        bn_momentum: momentum of the output BatchNormalization (0.9 = PyTorch 0.1).
        **kwargs: standard `keras.layers.Layer` arguments (name, dtype, ...).

    Example:
    >>> block = NonLocalBlock(reduction=2)
    >>> tuple(block(keras.ops.ones((2, 8, 4, 16))).shape)
    (2, 8, 4, 16)

    Reference:
        Wang et al., "Non-local Neural Networks", CVPR 2018; Ye et al., "Deep
        Learning for Person Re-identification: A Survey and Outlook" (AGW), TPAMI
        2021, `Non_local` in github.com/mangye16/Cross-Modal-Re-ID-baseline.
    """

    def __init__(self, reduction: int = 2, bn_momentum: float = 0.9, **kwargs):
        super().__init__(**kwargs)
        self.reduction = int(reduction)
        self.bn_momentum = float(bn_momentum)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.inter_channels = max(1, channels // self.reduction)
        self.theta = keras.layers.Conv2D(self.inter_channels, 1, name="theta", dtype=self.dtype_policy)
        self.phi = keras.layers.Conv2D(self.inter_channels, 1, name="phi", dtype=self.dtype_policy)
        self.g = keras.layers.Conv2D(self.inter_channels, 1, name="g", dtype=self.dtype_policy)
        self.output_conv = keras.layers.Conv2D(channels, 1, name="output_conv", dtype=self.dtype_policy)
        self.output_bn = keras.layers.BatchNormalization(
            momentum=self.bn_momentum,
            epsilon=1e-5,
            gamma_initializer="zeros",  # identity at initialisation
            beta_initializer="zeros",
            name="output_bn",
            dtype=self.dtype_policy,
        )
        for conv in (self.theta, self.phi, self.g):
            conv.build(input_shape)
        inner_shape = tuple(input_shape[:-1]) + (self.inter_channels,)
        self.output_conv.build(inner_shape)
        self.output_bn.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        shape = ops.shape(inputs)
        batch, height, width = shape[0], shape[1], shape[2]
        num_positions = height * width
        # [B, N, inter] views of the three embeddings.
        theta = ops.reshape(self.theta(inputs), (batch, num_positions, self.inter_channels))
        phi = ops.reshape(self.phi(inputs), (batch, num_positions, self.inter_channels))
        g = ops.reshape(self.g(inputs), (batch, num_positions, self.inter_channels))
        affinity = ops.matmul(theta, ops.transpose(phi, (0, 2, 1)))  # [B, N, N]
        affinity = affinity / ops.cast(num_positions, affinity.dtype)
        y = ops.matmul(affinity, g)  # [B, N, inter]
        y = ops.reshape(y, (batch, height, width, self.inter_channels))
        return self.output_bn(self.output_conv(y), training=training) + inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"reduction": self.reduction, "bn_momentum": self.bn_momentum})
        return config
