"""The network's fixed facts that the config validates against: ResNet-50's stages, the backbone variants,
the ablation rows of the paper's Table 3, and the checks of the values that shape the network.

A leaf (standard library and the image contract only), so that `kdem_tf.config` validates without
importing Keras or the model, and the model's modules import these facts from here.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

from kdem_tf.image_contract import normalization_for_weights

GEM_P = 3.0  # AGW's generalized-mean pooling exponent (GeneralizedMeanPoolingP, fixed, not learned)
BACKBONES = ("torchvision", "keras")  # ResNet-50 v1.5 (torchvision, AGW's) | v1 (keras.applications)
# (stage name, bottleneck filters, number of blocks, stride of the first block)
RESNET50_STAGES = (("conv2", 64, 3, 1), ("conv3", 128, 4, 2), ("conv4", 256, 6, 2), ("conv5", 512, 3, 2))
RESNET50_BLOCKS = tuple(blocks for _, _, blocks, _ in RESNET50_STAGES)  # (3, 4, 6, 3): model.stage_blocks

# The rows of the paper's Table 3: build_kdem_models(kdem=...) and the trainer's switches.
ABLATION_ROWS = {
    "baseline": {"kdem": False, "use_diversity_loss": False, "use_consistency_loss": False},
    "kdem": {"kdem": True, "use_diversity_loss": False, "use_consistency_loss": False},
    "kdem_div": {"kdem": True, "use_diversity_loss": True, "use_consistency_loss": False},
    "kdem_con": {"kdem": True, "use_diversity_loss": False, "use_consistency_loss": True},
    "full": {"kdem": True, "use_diversity_loss": True, "use_consistency_loss": True},
}


def check_stage_blocks(stage_blocks: Sequence[int], where: str = "stage_blocks") -> Tuple[int, ...]:
    """`stage_blocks` as a tuple when it is 4 positive block counts (conv2_x..conv5_x), else a
    ValueError naming `where` (`model.stage_blocks` for the config)."""
    blocks = tuple(stage_blocks)
    if len(blocks) != len(RESNET50_STAGES) or min(blocks) < 1:
        raise ValueError(f"{where} must be 4 positive block counts (conv2_x..conv5_x; ResNet-50: "
                         f"{list(RESNET50_BLOCKS)}), got {list(blocks)}")
    return blocks


def check_inner_channels(value: Union[int, str], where: str = "non-local inner channels") -> Union[int, str]:
    """A positive integer or "half"; anything else raises ValueError naming `where`."""
    if value == "half":
        return value
    is_integer = isinstance(value, int) and not isinstance(value, bool)
    if not (is_integer or (isinstance(value, str) and value.isdigit())) or int(value) < 1:
        raise ValueError(f"{where}: expected a positive integer or 'half', got {value!r}")
    return int(value)


def backbone_for_weights(weights: Optional[str]) -> Optional[str]:
    """The backbone variant ("torchvision" or "keras") that a kind of weights fits; None for random init."""
    if weights in (None, "", "none"):
        return None
    return {"torchvision": "torchvision", "caffe": "keras"}[normalization_for_weights(weights)]
