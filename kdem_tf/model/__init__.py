"""KDEM model, losses and training step (Shan et al. 2022, built on AGW)."""
from kdem_tf.model.gem_pooling import GeMPooling
from kdem_tf.model.kdem_layer import KDEMLayer
from kdem_tf.model.losses import (
    LOSS_WEIGHTS,
    consistency_loss,
    diversity_loss,
    identity_loss,
    total_loss,
    weighted_regularized_triplet,
)
from kdem_tf.model.model import HEAD_LAYER_NAMES, build_kdem_models
from kdem_tf.model.non_local import NonLocalBlock
from kdem_tf.model.optim import WarmupMultiStepSchedule, build_optimizer
from kdem_tf.model.backbone_weights import load_backbone_weights
from kdem_tf.architecture import ABLATION_ROWS, BACKBONES  # noqa: F401 (re-exported)
from kdem_tf.model.resnet import build_stem, build_trunk
from kdem_tf.model.trainer import KDEMTrainer
