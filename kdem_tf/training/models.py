"""The networks of a training config: the KDEM train and inference models of its ablation row."""
from __future__ import annotations

import dataclasses


def build_models(config, num_classes: int, row: dict, strategy):
    """(train_model, inference_model) for the config's ablation row (`kdem_tf.architecture.ABLATION_ROWS`),
    under the strategy's scope. With `model.init_from` the backbone starts random (the run's weights follow)."""
    from kdem_tf.model.model import build_kdem_models

    model_config = config.model
    if config.model.init_from not in (None, "none", ""):  # --init-from replaces the backbone weights
        model_config = dataclasses.replace(config.model, backbone_weights="none")
    with strategy.scope():
        train_model, inference_model = build_kdem_models(model_config, num_classes, config.data.image_size,
                                                         kdem=row["kdem"])
    return train_model, inference_model
