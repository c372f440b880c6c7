"""Non-local block (dot-product form) as used by AGW."""
from __future__ import annotations

from typing import Optional, Union

import keras
from keras import ops

from kdem_tf.architecture import check_inner_channels
from kdem_tf.model.fused_batch_norm import FusedBatchNormalization



@keras.saving.register_keras_serializable(package="kdem_tf")
class NonLocalBlock(keras.layers.Layer):
    """Non-local block, dot-product ("f / N") form, starting as the identity.

    theta, phi and g are 1x1 convolutions to `inter_channels`; with N = H*W
    query positions and M key positions, `f = theta(x) phi(x)^T / M` ([B, N, M]),
    `y = f g(x)`, and the output is `z = BN(W(y)) + x` with W a 1x1 convolution
    back to C channels. The BN's gamma and beta start at zero so the block is the
    identity at initialisation and does not disturb the ImageNet-pretrained trunk.

    With `subsample=True`, phi(x) and g(x) are 2x2 max-pooled before the
    product, so M = N/4: the non-local paper's subsampling (Sec. 4.1). AGW does
    not subsample, hence the default False.

    Inner channels: AGW's released `Non_local` sets `inter_channels =
    reduc_ratio // reduc_ratio`, i.e. 1 channel; that code produced AGW's numbers
    (and, as far as anyone can tell, KDEM's), so 1 is the `paper` preset's value.
    "half" gives C/2, the non-local paper's design and AGW's evident intent.

    Cost at 288x144 input (N = 36*18 = 648 in conv3_x, 18*9 = 162 in conv4_x):
    the 1x1 convolutions dominate, not the affinity. The 5 blocks with C/2
    inner channels add ~3.7 GFLOPs per image to the trunk's ~10 (a plain
    ResNet-50 is 6.5); with 1 inner channel they add almost nothing. Subsampling saves little
    (`python -m benchmarks.bench_train` prints the GFLOPs and the speed). As f
    has no softmax, y = theta(x) (phi(x)^T g(x)) / M exactly; that order is used
    when M > inter_channels (known statically), where it is the cheaper product.

    Args:
        inner_channels: channels of theta, phi and g: a positive integer (1 as
            AGW's code) or "half" (C // 2, the non-local paper's).
        subsample: 2x2 max-pool keys and values (see above).
        bn_momentum: momentum of the output BatchNormalization (0.9 = PyTorch 0.1).
        fused_batch_norm: output BN on TF's fused kernel (`FusedBatchNormalization`).
        reduction: models saved before `inner_channels` existed: C // reduction
            inner channels (overrides `inner_channels`).
        **kwargs: standard `keras.layers.Layer` arguments (name, dtype, ...).

    Example:
    >>> block = NonLocalBlock(inner_channels="half")
    >>> tuple(block(keras.ops.ones((2, 8, 4, 16))).shape)
    (2, 8, 4, 16)

    Reference:
        Wang et al., "Non-local Neural Networks", CVPR 2018; Ye et al., "Deep
        Learning for Person Re-identification: A Survey and Outlook" (AGW), TPAMI
        2021, `Non_local` in github.com/mangye16/Cross-Modal-Re-ID-baseline.
    """

    def __init__(
        self,
        inner_channels: Union[int, str] = 1,
        subsample: bool = False,
        bn_momentum: float = 0.9,
        fused_batch_norm: bool = True,
        reduction: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.inner_channels = check_inner_channels(inner_channels)
        self.reduction = None if reduction is None else int(reduction)
        self.subsample = bool(subsample)
        self.bn_momentum = float(bn_momentum)
        self.fused_batch_norm = bool(fused_batch_norm)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if self.reduction is not None:
            self.inter_channels = max(1, channels // self.reduction)
        elif self.inner_channels == "half":
            self.inter_channels = max(1, channels // 2)
        else:
            self.inter_channels = self.inner_channels
        self.theta = keras.layers.Conv2D(self.inter_channels, 1, name="theta", dtype=self.dtype_policy)
        self.phi = keras.layers.Conv2D(self.inter_channels, 1, name="phi", dtype=self.dtype_policy)
        self.g = keras.layers.Conv2D(self.inter_channels, 1, name="g", dtype=self.dtype_policy)
        self.output_conv = keras.layers.Conv2D(channels, 1, name="output_conv", dtype=self.dtype_policy)
        bn_class = FusedBatchNormalization if self.fused_batch_norm else keras.layers.BatchNormalization
        self.output_bn = bn_class(
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
        phi, g = self.phi(inputs), self.g(inputs)
        if self.subsample:
            phi = ops.max_pool(phi, pool_size=2, strides=2, padding="same")
            g = ops.max_pool(g, pool_size=2, strides=2, padding="same")
        key_shape = ops.shape(phi)
        num_keys = key_shape[1] * key_shape[2]
        key_height, key_width = phi.shape[1], phi.shape[2]  # static, or None
        static_keys = key_height * key_width if key_height is not None and key_width is not None else None
        phi = ops.reshape(phi, (batch, num_keys, self.inter_channels))
        g = ops.reshape(g, (batch, num_keys, self.inter_channels))
        if static_keys is not None and static_keys > self.inter_channels:
            # No softmax, so (theta phi^T) g = theta (phi^T g): with more keys than inner
            # channels the [inter, inter] product is the cheaper one (conv3_x at 288x144:
            # 648 keys, 256 channels; forward+backward 1.48x faster, measured).
            context = ops.matmul(ops.transpose(phi, (0, 2, 1)), g)  # [B, inter, inter]
            y = ops.matmul(theta, context / ops.cast(num_keys, context.dtype))  # [B, N, inter]
        else:
            affinity = ops.matmul(theta, ops.transpose(phi, (0, 2, 1)))  # [B, N, M]
            affinity = affinity / ops.cast(num_keys, affinity.dtype)
            y = ops.matmul(affinity, g)  # [B, N, inter]
        y = ops.reshape(y, (batch, height, width, self.inter_channels))
        return self.output_bn(self.output_conv(y), training=training) + inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "inner_channels": self.inner_channels,
                "subsample": self.subsample,
                "bn_momentum": self.bn_momentum,
                "fused_batch_norm": self.fused_batch_norm,
            }
        )
        if self.reduction is not None:
            config["reduction"] = self.reduction
        return config
