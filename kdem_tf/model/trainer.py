"""`KDEMTrainer`: the train/test steps around the KDEM train model (TensorFlow backend)."""
from __future__ import annotations

from typing import Sequence, Tuple

import keras
import tensorflow as tf

from kdem_tf.model.losses import LOSS_WEIGHTS, total_loss
from kdem_tf.model.model import HEAD_LAYER_NAMES

LOSS_METRICS = ("loss", "id_loss", "wrt_loss", "div_loss", "con_loss", "id_accuracy", "wrt_precision")
FACTOR_METRICS = ("mi_v_mean", "mi_v_std")


class KDEMTrainer(keras.Model):
    """Wraps the train model from `build_kdem_models` with the KDEM losses (Eq. 11).

    Data: `({"visible": [B, H, W, 3], "infrared": [B, H, W, 3]},
    {"label_v": [B], "label_i": [B]})`; visible[k] and infrared[k] share an identity.

    `train_step` runs the train model, computes the losses of `total_loss` in
    float32, adds coupled L2 weight decay, divides by the number of replicas
    (gradients are summed across replicas; each replica mines triplets in its own
    batch), scales the loss for float16 (`optimizer.scale_loss`, a no-op unless
    `compile` wrapped the optimizer in a LossScaleOptimizer, which Keras does
    under a mixed_float16 policy), multiplies backbone gradients by
    `backbone_lr_scale` (the second learning rate, see `kdem_tf.model.optim`) and
    applies them. Metrics: loss (the Eq. 11 total, without weight decay), the four
    terms, ID accuracy over all streams, WRT precision, and with KDEM the batch
    mean and standard deviation of mi_v. `test_step` reports the same, no update.
    Watch mi_v_mean / mi_v_std: from random initialisation the factors saturate
    during the first epoch, even at the warm-up rate (mean mi_v 0.97-0.98 over it,
    mi_v = 1.000 with std 0.000 from the second epoch on; docs/training.md).

    Saving: save/checkpoint `trainer.train_model` (or its weights); the trainer has
    no extra weights besides the optimizer's.

    Args:
        train_model: the first model returned by `build_kdem_models`.
        loss_weights: (λ_id, λ_wrt, λ_div, λ_con), (1, 1, 1, 0.1) in the paper.
        use_diversity_loss, use_consistency_loss: Table 3 ablation switches (only
            meaningful with KDEM); see `ABLATION_ROWS`.
        con_detach_factors: the factors as constants in L_con (beyond the paper; see
            `losses.consistency_loss`).
        backbone_lr_scale: gradient multiplier of all variables outside the head
            layers (backbone_lr / base_lr; 1.0 for a single learning rate).
        weight_decay: coupled L2 coefficient on all trainable variables.
        head_layer_names: train-model layers trained at the full learning rate.
        **kwargs: `keras.Model` arguments (name, ...).

    Example:
    >>> train_model, _ = build_kdem_models(ModelConfig(backbone_weights="none"), 4, (64, 32))  # doctest: +SKIP
    >>> setup = build_optimizer(steps_per_epoch=10)                             # doctest: +SKIP
    >>> trainer = KDEMTrainer(train_model, backbone_lr_scale=setup.backbone_lr_scale,
    ...                       weight_decay=setup.weight_decay)                  # doctest: +SKIP
    >>> trainer.compile(optimizer=setup.optimizer)                              # doctest: +SKIP
    >>> trainer.fit(dataset, epochs=80)                                         # doctest: +SKIP

    Reference:
        Shan et al., ICANN 2022, Eq. 11 and Table 3; AGW's train.py.
    """

    def __init__(
        self,
        train_model: keras.Model,
        loss_weights: Tuple[float, float, float, float] = LOSS_WEIGHTS,
        use_diversity_loss: bool = True,
        use_consistency_loss: bool = True,
        con_detach_factors: bool = False,
        backbone_lr_scale: float = 1.0,
        weight_decay: float = 0.0,
        head_layer_names: Sequence[str] = HEAD_LAYER_NAMES,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.train_model = train_model
        self.loss_weights = tuple(float(weight) for weight in loss_weights)
        self.use_diversity_loss = bool(use_diversity_loss)
        self.use_consistency_loss = bool(use_consistency_loss)
        self.con_detach_factors = bool(con_detach_factors)
        self.backbone_lr_scale = float(backbone_lr_scale)
        self.weight_decay = float(weight_decay)
        self.head_layer_names = tuple(head_layer_names)
        self.has_kdem = "influence_factors" in train_model.output
        names = LOSS_METRICS + (FACTOR_METRICS if self.has_kdem else ())
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    def call(self, inputs, training=None):
        return self.train_model(inputs, training=training)

    @property
    def metrics(self):
        return list(self.trackers.values())

    def gradient_scales(self, variables) -> list:
        """Per-variable gradient multiplier: 1 for head layers, backbone_lr_scale else."""
        head_ids = set()
        for name in self.head_layer_names:
            try:
                layer = self.train_model.get_layer(name)
            except ValueError:  # e.g. no bn_neck
                continue
            head_ids.update(id(variable) for variable in layer.trainable_weights)
        return [1.0 if id(variable) in head_ids else self.backbone_lr_scale for variable in variables]

    def compute_losses(self, data, training: bool):
        """Runs the train model on `data` and returns (outputs, the `total_loss` dict)."""
        inputs, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        outputs = self.train_model(inputs, training=training)
        losses = total_loss(
            outputs,
            labels["label_v"],
            labels["label_i"],
            loss_weights=self.loss_weights,
            use_diversity_loss=self.use_diversity_loss,
            use_consistency_loss=self.use_consistency_loss,
            con_detach_factors=self.con_detach_factors,
        )
        return outputs, losses

    def _update_metrics(self, outputs, losses):
        self.trackers["loss"].update_state(losses["total"])
        for name in LOSS_METRICS[1:]:
            self.trackers[name].update_state(losses[name])
        if self.has_kdem:
            mi_visible = tf.cast(outputs["influence_factors"][:, 0], tf.float32)
            self.trackers["mi_v_mean"].update_state(tf.reduce_mean(mi_visible))
            self.trackers["mi_v_std"].update_state(tf.math.reduce_std(mi_visible))
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def train_step(self, data):
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            outputs, losses = self.compute_losses(data, training=True)
            objective = losses["total"]
            if self.weight_decay > 0.0:
                # PyTorch's coupled weight decay: d/dw (wd/2 ||w||^2) = wd * w.
                squared_norm = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])
                objective = objective + 0.5 * self.weight_decay * squared_norm
            # Gradients are summed over replicas: divide for the global-batch mean.
            objective = objective / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
            scaled_objective = self.optimizer.scale_loss(objective)
        gradients = tape.gradient(scaled_objective, variables)
        gradients = [
            gradient if scale == 1.0 or gradient is None else gradient * scale
            for gradient, scale in zip(gradients, self.gradient_scales(variables))
        ]
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(outputs, losses)

    def test_step(self, data):
        outputs, losses = self.compute_losses(data, training=False)
        return self._update_metrics(outputs, losses)
