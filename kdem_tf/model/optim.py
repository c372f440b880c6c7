"""AGW's optimiser: SGD, two learning rates, warm-up then step decay.

AGW (train.py) trains the new head (BN-neck + classifier) at `lr` and everything
else (the ImageNet-initialised backbone) at `0.1 * lr`, with coupled L2 weight
decay 5e-4, momentum 0.9, Nesterov; lr warms up linearly over 10 epochs and is
divided by 10 at epochs 20 and 50.

Keras 3 has no per-variable learning rate. Instead of two optimizers we use ONE
SGD at the head's rate and multiply the backbone gradients by
`backbone_lr / base_lr` in `KDEMTrainer.train_step`: for (Nesterov) momentum
SGD the update is linear in the gradient, so this is exactly a second learning
rate (momentum included). Weight decay is PyTorch's coupled L2 (the gradient of
0.5 * wd * ||w||^2, decayed through momentum too), added to the objective in
`train_step`, not Keras' decoupled `weight_decay`.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kdem_tf")
class WarmupMultiStepSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Per-epoch piecewise-constant LR: linear warm-up, then x gamma at each milestone.

    lr(epoch) = base_lr * (epoch + 1) / warmup_epochs  for epoch < warmup_epochs,
                base_lr * gamma ** (number of milestones <= epoch) afterwards,
    with epoch = step // steps_per_epoch (AGW's adjust_learning_rate).

    Args:
        base_lr: peak learning rate.
        steps_per_epoch: optimizer steps in one epoch.
        warmup_epochs: epochs of linear warm-up (0 for none).
        milestones: epochs at which the rate is multiplied by gamma.
        gamma: decay factor.

    Example:
    >>> schedule = WarmupMultiStepSchedule(0.1, steps_per_epoch=100)
    >>> [round(float(schedule(step)), 6) for step in (0, 1000, 2000, 5000)]
    [0.01, 0.1, 0.01, 0.001]
    """

    def __init__(
        self,
        base_lr: float,
        steps_per_epoch: int,
        warmup_epochs: int = 10,
        milestones: Sequence[int] = (20, 50),
        gamma: float = 0.1,
    ):
        self.base_lr = float(base_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.warmup_epochs = int(warmup_epochs)
        self.milestones = tuple(int(epoch) for epoch in milestones)
        self.gamma = float(gamma)

    def __call__(self, step):
        epoch = ops.floor(ops.cast(step, "float32") / float(self.steps_per_epoch))
        decay = ops.ones((), "float32")
        for milestone in self.milestones:
            decay = decay * ops.where(epoch >= milestone, self.gamma, 1.0)
        learning_rate = self.base_lr * decay
        if self.warmup_epochs > 0:
            warmup = self.base_lr * (epoch + 1.0) / float(self.warmup_epochs)
            learning_rate = ops.where(epoch < self.warmup_epochs, warmup, learning_rate)
        return learning_rate

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "warmup_epochs": self.warmup_epochs,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
        }


class OptimizerSetup(NamedTuple):
    """What `KDEMTrainer` needs: the optimizer and the two gradient transforms."""

    optimizer: keras.optimizers.Optimizer
    backbone_lr_scale: float  # backbone_lr / base_lr, multiplies backbone gradients
    weight_decay: float  # coupled L2 coefficient


def build_optimizer(
    base_lr: float = 0.1,
    backbone_lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
    warmup_epochs: int = 10,
    milestones: Sequence[int] = (20, 50),
    steps_per_epoch: int = 1,
) -> OptimizerSetup:
    """AGW's SGD setup. Pass the result's fields on to the trainer:

    >>> setup = build_optimizer(steps_per_epoch=100)
    >>> trainer = KDEMTrainer(train_model, backbone_lr_scale=setup.backbone_lr_scale,
    ...                       weight_decay=setup.weight_decay)            # doctest: +SKIP
    >>> trainer.compile(optimizer=setup.optimizer)                         # doctest: +SKIP

    Args:
        base_lr: learning rate of the head (BN-neck, classifier, KDEM layer: HEAD_LAYER_NAMES).
        backbone_lr: learning rate of everything else (stems, trunk with its non-local blocks).
        momentum, nesterov: SGD momentum.
        weight_decay: coupled L2 weight decay (applied by the trainer).
        warmup_epochs, milestones: see `WarmupMultiStepSchedule` (gamma 0.1).
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        OptimizerSetup(optimizer, backbone_lr_scale, weight_decay).
    """
    schedule = WarmupMultiStepSchedule(base_lr, steps_per_epoch, warmup_epochs, milestones)
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, nesterov=nesterov)
    return OptimizerSetup(optimizer, backbone_lr / base_lr, weight_decay)
