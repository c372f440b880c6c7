"""The KDEM network of the paper's Fig. 2, as a train model and an inference model.

    visible  --visible_stem-->  F_v --+--------------------------------+
                                      |                                |
                                      +--KDEMLayer--> F_t, (mi_v, mi_i) |   (training only)
                                      |                                |
    infrared --infrared_stem--> F_i --+--------------------------------+
                                                    |
               [F_v; F_i; F_t] (concatenated on the batch axis, as AGW's torch.cat)
                                                    |
                            shared trunk (conv2_x ... conv5_x, non-local blocks)
                                                    |
                                 GeM (or average) pooling -> pooled_{v,i,t}   (WRT, L_con)
                                                    |
                                   BN-neck (no shift) -> classifier -> logits_{v,i,t} (L_id)

The streams go through the trunk as one concatenated batch so its BatchNorms and
the BN-neck normalise over all modalities together, as AGW does for v and i.
"""
from __future__ import annotations

from typing import Tuple

import keras
from keras import ops

from kdem_tf.config import ModelConfig
from kdem_tf.model.backbone_weights import load_backbone_weights
from kdem_tf.model.gem_pooling import GeMPooling
from kdem_tf.model.kdem_layer import KDEMLayer
from kdem_tf.architecture import GEM_P, RESNET50_BLOCKS
from kdem_tf.image_contract import MODALITY_INDEX, VISIBLE, as_contract
from kdem_tf.model.resnet import build_stem, build_trunk

VISIBLE_MODALITY = MODALITY_INDEX[VISIBLE]  # the image contract's encoding of the modality input
# Names of the new layers trained at the base learning rate: AGW's bottleneck + classifier,
# and the KDEM layer, which has no pretrained weights. Everything else (stems, trunk with
# its non-local blocks, as in AGW's "base" group) is "backbone" (see kdem_tf.model.optim).
HEAD_LAYER_NAMES = ("bn_neck", "classifier", "kdem")


@keras.saving.register_keras_serializable(package="kdem_tf", name="SelectByModality")
class _SelectByModality(keras.layers.Layer):
    """Per sample, picks the visible or the infrared stem output by the modality id.

    Inputs [visible_features [N, h, w, C], infrared_features [N, h, w, C],
    modality [N] int (0 visible, 1 infrared)] -> [N, h, w, C].
    """

    def call(self, inputs):
        visible_features, infrared_features, modality = inputs
        is_visible = ops.equal(ops.cast(modality, "int32"), VISIBLE_MODALITY)[:, None, None, None]
        return ops.where(is_visible, visible_features, infrared_features)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])


def build_kdem_models(model_config: ModelConfig, num_classes: int, contract, kdem: bool = True
                      ) -> Tuple[keras.Model, keras.Model]:
    """Builds the KDEM train model and an inference model sharing its weights.

    Args:
        model_config: the network's settings (`kdem_tf.config.ModelConfig`, its defaults the paper's);
            backbone_weights "none" (or None, "") is random initialisation.
        num_classes: number of training identities (classifier width).
        contract: the `ImageContract` of the inputs, or a bare (H, W) (288x144 as AGW).
        kdem: add the KDEM layer and the knowledge-enhanced stream t; False gives
            the two-stream AGW baseline of Table 3 (the ablation row's, `kdem_tf.architecture.ABLATION_ROWS`).

    The fields of `model_config`:
        non_local: non-local blocks in the trunk (AGW).
        non_local_subsample: 2x2 max-pooled keys/values in the non-local blocks
            (the non-local paper's subsampling; AGW has none). See `NonLocalBlock`.
        non_local_inner_channels: 1 (AGW's code) or "half" (C/2, the non-local
            paper's); see `NonLocalBlock`.
        gem: GeM pooling (p=3); False for global average pooling.
        bn_neck: BN-neck between pooling and classifier (AGW's bottleneck); its
            beta is fixed at zero (`center=False`) as AGW freezes the bias.
        shared_fc, fc_units, mlp_units: KDEMLayer options.
        last_stride: stride of conv5_x.
        backbone_weights: "torchvision", "imagenet", a ResNet-50 weights file, or
            None for random init; see `kdem_tf.model.backbone_weights`. They must fit
            `backbone`.
        fused_batch_norm: backbone BNs on TF's fused kernel (faster, same weights;
            see `FusedBatchNormalization`); False for Keras 3's own.
        backbone: "torchvision" (ResNet-50 v1.5, AGW's) or "keras" (v1); see
            `kdem_tf.model.resnet`.
        width: channel multiplier of the stems and the trunk (1: ResNet-50, the
            paper's; the demo preset trains 0.5 from random init). Embeddings are
            2048 * width wide.
        stage_blocks: bottleneck blocks in conv2_x..conv5_x ((3, 4, 6, 3): ResNet-50, the
            paper's; fewer train and trace faster from random init, as the tests do).

    Returns:
        (train_model, inference_model).

        train_model: inputs {"visible": [B, H, W, 3], "infrared": [B, H, W, 3]}
        (float, normalised by the image contract; pair k shares one identity); outputs a dict
        `pooled_v`, `pooled_i` [B, 2048], `logits_v`, `logits_i` [B, num_classes]
        and, with KDEM, `pooled_t`, `logits_t` and `influence_factors` [B, 2].

        inference_model: inputs {"image": [N, H, W, 3] float32, "modality": [N]
        int32 (0 visible, 1 infrared)}; outputs {"embedding": [N, 2048]}, the
        L2-normalised BN-neck feature in inference mode (AGW's test-time `feat`;
        the pooled feature when bn_neck=False). No KDEM at test time (paper Sec.
        3.3). Both stems run on every image and the right one is selected per
        sample: this costs one extra stem (~3% of the ResNet-50 FLOPs) but lets
        one batch mix modalities. It shares every layer object with the train
        model, so training updates it.

    Example:
    >>> train_model, inference_model = build_kdem_models(ModelConfig(backbone_weights="none"), 4, (64, 32))
    >>> sorted(train_model.output.keys())[:3]
    ['influence_factors', 'logits_i', 'logits_t']
    """
    m = model_config
    image_size = as_contract(contract).image_size
    image_shape = (int(image_size[0]), int(image_size[1]), 3)
    stems, trunk = _backbone(m, image_shape)
    kdem_layer = KDEMLayer(fc_units=m.fc_units, mlp_units=m.mlp_units, shared_fc=m.shared_fc,
                           temperature=m.factor_temperature, name="kdem") if kdem else None
    head, classifier = _head(m, num_classes)
    train_model = _train_model(image_shape, stems, trunk, kdem_layer, head, classifier)
    inference_model = _inference_model(image_shape, stems, trunk, head)
    return train_model, inference_model


def _backbone(m: ModelConfig, image_shape):
    """((visible stem, infrared stem), trunk), with the backbone weights loaded."""
    backbone_weights = None if m.backbone_weights in (None, "", "none") else m.backbone_weights
    width, stage_blocks = m.width, tuple(m.stage_blocks)
    # Stage 0, one per modality (weights not shared, Eq. 1).
    stems = tuple(build_stem(f"{name}_stem", image_shape, fused_batch_norm=m.fused_batch_norm, backbone=m.backbone,
                             width=width) for name in ("visible", "infrared"))
    # Stages 1-4, shared by all modalities.
    trunk = build_trunk(
        "trunk",
        input_shape=tuple(stems[0].output.shape[1:]),
        last_stride=m.last_stride,
        non_local=m.non_local,
        non_local_subsample=m.non_local_subsample,
        non_local_inner_channels=m.non_local_inner_channels,
        fused_batch_norm=m.fused_batch_norm,
        backbone=m.backbone,
        width=width,
        stage_blocks=stage_blocks,
    )
    if (width != 1.0 or stage_blocks != RESNET50_BLOCKS) and backbone_weights is not None:
        raise ValueError(f"width={width}, stage_blocks={stage_blocks}: ImageNet weights fit ResNet-50 "
                         f"(width 1, {RESNET50_BLOCKS}) only; use backbone_weights=None")
    load_backbone_weights(list(stems), trunk, backbone_weights)
    return stems, trunk


def _head(m: ModelConfig, num_classes: int):
    """(head(trunk features) -> (pooled, normalised), classifier): GeM (AGW's p) or average pooling, the
    BN-neck, the identity classifier. They run in float32 under mixed precision: the losses use them."""
    if m.gem:
        pooling = GeMPooling(p=GEM_P, name="gem_pooling", dtype="float32")
    else:
        pooling = keras.layers.GlobalAveragePooling2D(name="avg_pooling", dtype="float32")
    bottleneck = None
    if m.bn_neck:
        bottleneck = keras.layers.BatchNormalization(
            center=False,  # AGW: bottleneck.bias.requires_grad_(False), i.e. beta stays 0
            momentum=0.9,
            epsilon=1e-5,
            gamma_initializer=keras.initializers.RandomNormal(mean=1.0, stddev=0.01),
            name="bn_neck",
            dtype="float32",
        )
    classifier = keras.layers.Dense(
        num_classes,
        use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.001),
        name="classifier",
        dtype="float32",
    )

    def head(trunk_features):
        pooled = pooling(trunk_features)
        normalised = bottleneck(pooled) if bottleneck is not None else pooled
        return pooled, normalised
    return head, classifier


def _train_model(image_shape, stems, trunk, kdem_layer, head, classifier) -> keras.Model:
    """Three streams (two without KDEM) through the shared trunk and head, concatenated on the batch axis."""
    visible = keras.Input(shape=image_shape, name="visible")
    infrared = keras.Input(shape=image_shape, name="infrared")
    stem_features = [stems[0](visible), stems[1](infrared)]  # F_v, F_i
    streams = ["v", "i"]
    influence_factors = None
    if kdem_layer is not None:
        enhanced_features, influence_factors = kdem_layer(stem_features)  # F_t, (mi_v, mi_i)
        stem_features.append(enhanced_features)
        streams.append("t")
    all_stem_features = ops.concatenate(stem_features, axis=0)  # [S*B, h, w, 64]
    pooled, normalised = head(trunk(all_stem_features))
    logits = classifier(normalised)
    outputs = {}
    for stream, pooled_stream, logits_stream in zip(
        streams, ops.split(pooled, len(streams), axis=0), ops.split(logits, len(streams), axis=0)
    ):
        outputs[f"pooled_{stream}"] = pooled_stream
        outputs[f"logits_{stream}"] = logits_stream
    if influence_factors is not None:
        outputs["influence_factors"] = influence_factors
    return keras.Model({"visible": visible, "infrared": infrared}, outputs, name="kdem_train")


def _inference_model(image_shape, stems, trunk, head) -> keras.Model:
    """One image of either modality per row (the same layer objects as the train model)."""
    image = keras.Input(shape=image_shape, name="image", dtype="float32")
    modality = keras.Input(shape=(), name="modality", dtype="int32")
    query_stem_features = _SelectByModality(name="select_stem")([stems[0](image), stems[1](image), modality])
    _, query_features = head(trunk(query_stem_features))
    embedding = keras.layers.UnitNormalization(axis=-1, name="embedding", dtype="float32")(query_features)
    return keras.Model({"image": image, "modality": modality}, {"embedding": embedding}, name="kdem_inference")
