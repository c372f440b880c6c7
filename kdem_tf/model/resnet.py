"""ResNet-50 split into a modality-specific stem and a shared trunk (paper Sec. 3.2).

Two variants (`backbone`), the same layer names in both:

- "torchvision": ResNet-50 v1.5 as torchvision builds it and as AGW trains it
  (`torchvision.models.resnet50`, AGW's `resnet.py`): the stride of a stage sits on
  the 3x3 conv of its first bottleneck, convolutions have no bias, BN epsilon is
  1e-5, and the padding is torchvision's symmetric zero padding (conv1 7x7/2 pad 3,
  max-pool 3x3/2 pad 1, every 3x3 conv pad 1) made explicit with ZeroPadding2D,
  because Keras' "same" pads (0, 1) under stride 2 on even sizes.
  The max-pool's zero padding equals PyTorch's -inf padding: it follows a ReLU.
- "keras": `keras.applications.ResNet50` (v1: stride on the first 1x1 conv, conv
  biases, epsilon 1.001e-5), the variant Keras' ImageNet weights fit.

The layers carry the names of `keras.applications.ResNet50` (`conv1_conv`,
`conv2_block1_1_conv`, ..., `conv5_block3_out`) in both variants; the mapping to
torchvision's names (`conv1`, `layer1.0.conv1`, `layer1.0.downsample.0`, ...) is
`kdem_tf.model.backbone_weights.torchvision_name`. The split follows AGW's
`visible_module` / `thermal_module` (stage 0: conv1, BN, ReLU, max-pool; one copy
per modality) and `base_resnet` (stages 1-4 = layer1..layer4 = conv2_x ... conv5_x;
shared by all modalities).

Differences from the ImageNet ResNet-50, all weight-free, as AGW:
- `last_stride=1` removes the stride of conv5_x (re-ID convention): a 288x144 image
  gives an 18x9 final feature map instead of 9x5.
- Non-local blocks after the last 2 blocks of conv3_x and the last 3 of conv4_x
  (AGW's `embed_net`, non_layers=[0, 2, 3, 0]).
- BatchNormalization momentum 0.9 (Keras' convention for PyTorch's momentum=0.1).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import keras

from kdem_tf.architecture import BACKBONES, RESNET50_STAGES, check_stage_blocks
from kdem_tf.config import ModelConfig
from kdem_tf.model.fused_batch_norm import FusedBatchNormalization
from kdem_tf.model.non_local import NonLocalBlock

BN_EPSILON = {"torchvision": 1e-5, "keras": 1.001e-5}  # torch.nn.BatchNorm2d / keras.applications.resnet
BN_MOMENTUM = 0.9  # PyTorch's momentum=0.1 (Keras weighs the old value, PyTorch the new one)

# Number of non-local blocks per stage, placed after its last blocks (AGW's non_layers); a stage built
# with fewer blocks (model.stage_blocks) has one after each of its blocks.
NON_LOCAL_BLOCKS_PER_STAGE = {"conv2": 0, "conv3": 2, "conv4": 3, "conv5": 0}
STEM_CHANNELS = 64
TRUNK_CHANNELS = 2048



def scaled_channels(channels: int, width: float) -> int:
    """`channels` of ResNet-50 times the width multiplier (`model.width`), at least 8."""
    return max(8, int(round(channels * width)))
_DEFAULTS = ModelConfig()


def check_backbone(backbone: str) -> str:
    if backbone not in BACKBONES:
        raise ValueError(f"model.backbone: unknown {backbone!r}; known: {', '.join(BACKBONES)}")
    return backbone


def _batch_norm(name: str, backbone: str, gamma_initializer="ones", fused: bool = True):
    layer_class = FusedBatchNormalization if fused else keras.layers.BatchNormalization
    return layer_class(axis=-1, epsilon=BN_EPSILON[backbone], momentum=BN_MOMENTUM,
                       gamma_initializer=gamma_initializer, name=name)


def build_stem(
    name: str = "stem",
    input_shape: Tuple[Optional[int], ...] = (None, None, 3),
    fused_batch_norm: bool = True,
    backbone: str = _DEFAULTS.backbone,
    width: float = _DEFAULTS.width,
) -> keras.Model:
    """Stage 0 of ResNet-50 (conv 7x7/2 pad 3, BN, ReLU, max-pool 3x3/2 pad 1) as a `keras.Model`.

    Args:
        name: model name; the two modality stems need different names
            (e.g. "visible_stem", "infrared_stem") to live in one model.
        input_shape: (H, W, 3) of the normalised image (see kdem_tf.image_contract).
        fused_batch_norm: `FusedBatchNormalization` (TF's fused kernel) instead of
            Keras 3's op-by-op BatchNormalization; same weights and results.
        backbone: "torchvision" (bias-free conv, eps 1e-5) or "keras" (conv bias).
        width: channel multiplier (1: ResNet-50's 64 channels; see `scaled_channels`).

    Returns:
        A model mapping [B, H, W, 3] to [B, H/4, W/4, 64 * width].
    """
    check_backbone(backbone)
    image = keras.Input(shape=input_shape, name=f"{name}_input")
    x = keras.layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(image)
    x = keras.layers.Conv2D(scaled_channels(STEM_CHANNELS, width), 7, strides=2, use_bias=backbone == "keras", name="conv1_conv")(x)
    x = _batch_norm("conv1_bn", backbone, fused=fused_batch_norm)(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    return keras.Model(image, x, name=name)


def _conv(x, filters: int, kernel: int, stride: int, name: str, backbone: str):
    """A conv of the bottleneck: torchvision's (bias-free, explicit symmetric pad) or Keras' (bias, "same")."""
    if backbone == "keras":
        return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same" if kernel > 1 else "valid",
                                   name=name)(x)
    if kernel > 1 and stride > 1:
        # torchvision pads (k-1)/2 on every side; Keras' "same" would pad (0, 1) on even sizes.
        x = keras.layers.ZeroPadding2D(padding=kernel // 2, name=name.replace("_conv", "_pad"))(x)
        padding = "valid"
    else:
        padding = "same" if kernel > 1 else "valid"  # stride 1: "same" is the symmetric pad (k-1)/2
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=name)(x)


def _bottleneck_block(x, filters: int, stride: int, conv_shortcut: bool, name: str, backbone: str,
                      zero_init_residual: bool = True, fused: bool = True):
    """One bottleneck, names as keras.applications' `residual_block_v1`.

    torchvision (v1.5): 1x1 → 3x3 with the stride → 1x1; keras (v1): the stride on
    the first 1x1. `zero_init_residual`: the last BN (`{name}_3_bn`) starts with
    gamma = 0 (see `build_trunk`).
    """
    if conv_shortcut:  # torchvision's downsample.0 / downsample.1
        shortcut = _conv(x, 4 * filters, 1, stride, f"{name}_0_conv", backbone)
        shortcut = _batch_norm(f"{name}_0_bn", backbone, fused=fused)(shortcut)
    else:
        shortcut = x
    first_stride, middle_stride = (stride, 1) if backbone == "keras" else (1, stride)
    x = _conv(x, filters, 1, first_stride, f"{name}_1_conv", backbone)
    x = _batch_norm(f"{name}_1_bn", backbone, fused=fused)(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv(x, filters, 3, middle_stride, f"{name}_2_conv", backbone)
    x = _batch_norm(f"{name}_2_bn", backbone, fused=fused)(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = _conv(x, 4 * filters, 1, 1, f"{name}_3_conv", backbone)
    # Zero gamma: the block starts as its shortcut (Goyal et al. 2017), see build_trunk.
    x = _batch_norm(f"{name}_3_bn", backbone, "zeros" if zero_init_residual else "ones", fused=fused)(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def build_trunk(
    name: str = "trunk",
    input_shape: Tuple[Optional[int], ...] = (None, None, STEM_CHANNELS),
    last_stride: int = _DEFAULTS.last_stride,
    non_local: bool = _DEFAULTS.non_local,
    non_local_inner_channels: Union[int, str] = _DEFAULTS.non_local_inner_channels,
    non_local_subsample: bool = _DEFAULTS.non_local_subsample,
    zero_init_residual: bool = True,
    fused_batch_norm: bool = _DEFAULTS.fused_batch_norm,
    backbone: str = _DEFAULTS.backbone,
    width: float = _DEFAULTS.width,
    stage_blocks: Sequence[int] = _DEFAULTS.stage_blocks,
) -> keras.Model:
    """Stages 1-4 of ResNet-50 (conv2_x ... conv5_x = torchvision's layer1..layer4), shared by all modalities.

    Args:
        name: model name.
        input_shape: shape of a stem output, (H/4, W/4, 64).
        last_stride: stride of conv5_x (1 for re-ID as AGW, 2 for plain ResNet-50).
        non_local: insert `NonLocalBlock`s after the last 2 blocks of conv3_x and the
            last 3 of conv4_x (AGW). They are named e.g. `conv3_block3_non_local`.
        non_local_inner_channels: inner channels of every non-local block: 1 as
            AGW's released code (`reduc_ratio // reduc_ratio`), or "half" (C/2, the
            non-local paper's design and AGW's evident intent). See `NonLocalBlock`.
        non_local_subsample: 2x2 max-pool the non-local keys and values (the
            non-local paper's subsampling; see `NonLocalBlock`).
        zero_init_residual: start the last BN gamma of every bottleneck's residual
            branch at 0 (Goyal et al. 2017, "Accurate, Large Minibatch SGD", Sec.
            5.1; torchvision's `zero_init_residual`, off there and in AGW), so each
            block starts as its shortcut. Only random initialisation sees it
            (ImageNet weights overwrite every `_3_bn` gamma). A randomly initialised
            ResNet-50 adds 16 unit-variance residual branches to the stream, so the
            trunk output and its GeM-pooled features grow large (WRT loss ~60 at
            step 1, huge gradients that saturated the KDEM factors and collapsed
            the features in the first steps of the "demo" preset); with the zero
            init the output stays at the scale of one BN-ReLU.
        fused_batch_norm: see `build_stem`.
        backbone: "torchvision" (v1.5) or "keras" (v1); see the module docstring.
        width: channel multiplier of every bottleneck (1: ResNet-50; 0.5 halves each
            conv's channels, about a quarter of the FLOPs and weights; random init only).
        stage_blocks: bottleneck blocks of conv2_x..conv5_x ((3, 4, 6, 3): ResNet-50;
            fewer: a shallower trunk with the same stages and names, random init only).

    Returns:
        A model mapping [B, h, w, 64 w] to [B, h/4, w/4, 2048 w] (last_stride=1; /8 with 2).
    """
    check_backbone(backbone)
    features = keras.Input(shape=input_shape, name=f"{name}_input")
    x = features
    for (stage, filters, _, first_stride), num_blocks in zip(RESNET50_STAGES, check_stage_blocks(stage_blocks)):
        if stage == "conv5":
            first_stride = last_stride
        num_non_local = min(num_blocks, NON_LOCAL_BLOCKS_PER_STAGE[stage]) if non_local else 0
        for block_index in range(1, num_blocks + 1):
            block_name = f"{stage}_block{block_index}"
            x = _bottleneck_block(x, scaled_channels(filters, width), stride=first_stride if block_index == 1 else 1,
                                  conv_shortcut=block_index == 1, name=block_name, backbone=backbone,
                                  zero_init_residual=zero_init_residual, fused=fused_batch_norm)
            if block_index > num_blocks - num_non_local:
                x = NonLocalBlock(inner_channels=non_local_inner_channels, subsample=non_local_subsample,
                                  fused_batch_norm=fused_batch_norm, name=f"{block_name}_non_local")(x)
    return keras.Model(features, x, name=name)
