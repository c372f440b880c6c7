"""ResNet-50 split into a modality-specific stem and a shared trunk (paper Sec. 3.2).

The layers carry exactly the names of `keras.applications.ResNet50` (`conv1_conv`,
`conv2_block1_1_conv`, ..., `conv5_block3_out`) so ImageNet weights are copied by
layer name (`load_backbone_weights`). The split follows AGW's `visible_module` /
`thermal_module` (stage 0: conv1, BN, ReLU, max-pool; one copy per modality) and
`base_resnet` (stages 1-4 = conv2_x ... conv5_x; shared by all modalities).

Differences from `keras.applications.ResNet50`, all weight-free:
- `last_stride=1` removes the stride of conv5_x (person re-ID convention) so a
  288x144 image gives an 18x9 final feature map instead of 9x5.
- Non-local blocks are inserted after the last 2 blocks of conv3_x and the last 3
  of conv4_x, as AGW's `embed_net` (non_layers=[0, 2, 3, 0]).
- BatchNormalization momentum is 0.9 (PyTorch's momentum=0.1), as the reference
  PyTorch implementation trains with; Keras' default 0.99 is meant for larger
  batches and many more steps.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import keras

from kdem_tf.model.fused_batch_norm import FusedBatchNormalization
from kdem_tf.model.non_local import NonLocalBlock

BN_EPSILON = 1.001e-5  # as keras.applications.resnet
BN_MOMENTUM = 0.9  # PyTorch's default momentum=0.1, see the module docstring

# (stage name, bottleneck filters, number of blocks, stride of the first block)
RESNET50_STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))
# Number of non-local blocks per stage, placed after its last blocks (AGW's non_layers).
NON_LOCAL_BLOCKS_PER_STAGE = {"conv2": 0, "conv3": 2, "conv4": 3, "conv5": 0}
STEM_CHANNELS = 64
TRUNK_CHANNELS = 2048


def _batch_norm(name: str, gamma_initializer="ones", fused: bool = True) -> keras.layers.BatchNormalization:
    layer_class = FusedBatchNormalization if fused else keras.layers.BatchNormalization
    return layer_class(
        axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, gamma_initializer=gamma_initializer, name=name
    )


def build_stem(
    name: str = "stem", input_shape: Tuple[Optional[int], ...] = (None, None, 3), fused_batch_norm: bool = True
) -> keras.Model:
    """Stage 0 of ResNet-50 (conv 7x7/2, BN, ReLU, max-pool 3x3/2) as a `keras.Model`.

    Args:
        name: model name; the two modality stems need different names
            (e.g. "visible_stem", "infrared_stem") to live in one model.
        input_shape: (H, W, 3) of the ImageNet-normalised image.
        fused_batch_norm: `FusedBatchNormalization` (TF's fused kernel) instead of
            Keras 3's op-by-op BatchNormalization; same weights and results.

    Returns:
        A model mapping [B, H, W, 3] to [B, H/4, W/4, 64].
    """
    image = keras.Input(shape=input_shape, name=f"{name}_input")
    x = keras.layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(image)
    x = keras.layers.Conv2D(64, 7, strides=2, use_bias=True, name="conv1_conv")(x)
    x = _batch_norm("conv1_bn", fused=fused_batch_norm)(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    return keras.Model(image, x, name=name)


def _bottleneck_block(
    x, filters: int, stride: int, conv_shortcut: bool, name: str, zero_init_residual: bool = True, fused: bool = True
):
    """keras.applications' `residual_block_v1` (stride on the first 1x1 conv), same names.

    `zero_init_residual`: the residual branch's last BN (`{name}_3_bn`) starts with
    gamma = 0 (see `build_trunk`).
    """
    if conv_shortcut:
        shortcut = keras.layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = _batch_norm(f"{name}_0_bn", fused=fused)(shortcut)
    else:
        shortcut = x
    x = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = _batch_norm(f"{name}_1_bn", fused=fused)(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    x = _batch_norm(f"{name}_2_bn", fused=fused)(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    # Zero gamma: the block starts as its shortcut (Goyal et al. 2017), see build_trunk.
    x = _batch_norm(f"{name}_3_bn", "zeros" if zero_init_residual else "ones", fused=fused)(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def build_trunk(
    name: str = "trunk",
    input_shape: Tuple[Optional[int], ...] = (None, None, STEM_CHANNELS),
    last_stride: int = 1,
    non_local: bool = True,
    non_local_reduction: int = 2,
    non_local_subsample: bool = False,
    zero_init_residual: bool = True,
    fused_batch_norm: bool = True,
) -> keras.Model:
    """Stages 1-4 of ResNet-50 (conv2_x ... conv5_x), shared by all modalities.

    Args:
        name: model name.
        input_shape: shape of a stem output, (H/4, W/4, 64).
        last_stride: stride of conv5_x (1 for re-ID as AGW, 2 for plain ResNet-50).
        non_local: insert `NonLocalBlock`s after the last 2 blocks of conv3_x and the
            last 3 of conv4_x (AGW). They are named e.g. `conv3_block3_non_local`.
        non_local_reduction: inner channels of a non-local block are
            `in_channels // non_local_reduction`. AGW's published `Non_local` computes
            `reduc_ratio // reduc_ratio` (= 1 channel), evidently a typo; we follow
            the non-local paper and AGW's intent instead.
        non_local_subsample: 2x2 max-pool the non-local keys and values (the
            non-local paper's subsampling; see `NonLocalBlock`).
        zero_init_residual: start the last BN gamma of every bottleneck's residual
            branch at 0 (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec.
            5.1; torchvision's `zero_init_residual`), so each block starts as its
            shortcut. Why: only random initialisation sees it (ImageNet weights
            overwrite every `_3_bn` gamma). A randomly initialised ResNet-50 adds
            16 unit-variance residual branches to the stream, so the trunk output
            and its GeM-pooled features grow large (WRT loss ~60 at step 1, huge
            gradients that saturated the KDEM factors and collapsed the features
            in the first steps of the "demo" preset); with the zero init the output
            stays at the scale of one BN-ReLU and the blocks grow in as training
            needs them.
        fused_batch_norm: see `build_stem`.

    Returns:
        A model mapping [B, h, w, 64] to [B, h/4, w/4, 2048] (last_stride=1; /8 with 2).
    """
    features = keras.Input(shape=input_shape, name=f"{name}_input")
    x = features
    for stage, filters, num_blocks, first_stride in RESNET50_STAGES:
        if stage == "conv5":
            first_stride = last_stride
        num_non_local = NON_LOCAL_BLOCKS_PER_STAGE[stage] if non_local else 0
        for block_index in range(1, num_blocks + 1):
            block_name = f"{stage}_block{block_index}"
            x = _bottleneck_block(
                x,
                filters,
                stride=first_stride if block_index == 1 else 1,
                conv_shortcut=block_index == 1,
                name=block_name,
                zero_init_residual=zero_init_residual,
                fused=fused_batch_norm,
            )
            if block_index > num_blocks - num_non_local:
                x = NonLocalBlock(
                    reduction=non_local_reduction,
                    subsample=non_local_subsample,
                    fused_batch_norm=fused_batch_norm,
                    name=f"{block_name}_non_local",
                )(x)
    return keras.Model(features, x, name=name)


def _source_resnet50(weights: str) -> keras.Model:
    """A `keras.applications.ResNet50` holding the weights to copy."""
    if weights == "imagenet":
        return keras.applications.ResNet50(include_top=False, weights="imagenet")
    if not os.path.exists(weights):
        raise FileNotFoundError(f"backbone weights file not found: {weights}")
    # A file may hold the classifier ("predictions") or not: try without, then with.
    errors = []
    for include_top in (False, True):
        model = keras.applications.ResNet50(
            include_top=include_top, weights=None, input_shape=(224, 224, 3) if include_top else None
        )
        try:
            model.load_weights(weights)
            return model
        except Exception as error:  # wrong variant: try the other one
            errors.append(f"include_top={include_top}: {error}")
    raise ValueError(f"{weights} is not a keras.applications.ResNet50 weights file: " + "; ".join(errors))


def load_backbone_weights(stems: Sequence[keras.Model], trunk: keras.Model, weights: Optional[str]) -> int:
    """Copies ResNet-50 weights by layer name into every stem and the trunk.

    Each stem receives the same `conv1_*` weights (AGW initialises both modality
    modules from the ImageNet model). Non-local blocks have no counterpart and keep
    their initialisation (identity mapping).

    Args:
        stems: the modality stems from `build_stem`.
        trunk: the trunk from `build_trunk`.
        weights: "imagenet" (downloads on a connected machine), a path to a
            `.h5` / `.weights.h5` file of `keras.applications.ResNet50` weights
            (offline use), or None / "none" for random initialisation.

    Returns:
        The number of layers that received weights (0 for random init).
    """
    if weights is None or str(weights).lower() == "none":
        return 0
    source = _source_resnet50(str(weights))
    copied = 0
    for source_layer in source.layers:
        if not source_layer.weights or source_layer.name == "predictions":
            continue
        values = source_layer.get_weights()
        targets = stems if source_layer.name.startswith("conv1_") else [trunk]
        for target_model in targets:
            target_model.get_layer(source_layer.name).set_weights(values)
            copied += 1
    return copied
