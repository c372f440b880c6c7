"""Training configuration: frozen dataclasses, loaded from YAML and overridden by flags.

The config stops at the edge: `kdem_tf.train` reads it and passes plain values on.
Every run writes its resolved config to `RUN_DIR/config.yaml`.

Defaults are AGW's released code, which KDEM builds on (preset "paper", see
docs/training.md for every remaining difference); preset "demo" learns the
synthetic dataset on a CPU in minutes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import yaml


@dataclasses.dataclass(frozen=True)
class DataConfig:
    image_size: Tuple[int, int] = (288, 144)   # (H, W), AGW
    num_identities: int = 8                    # P
    num_instances: int = 4                     # K images per modality per identity
    random_erasing: float = 0.0                # probability; AGW's cross-modal train.py has none
    channel_augmentation: bool = False
    normalization: str = "auto"                # auto: the backbone weights' (kdem_tf.image_contract)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    non_local: bool = True
    non_local_subsample: bool = False          # 2x2-pooled keys/values (non-local paper; AGW: none)
    non_local_inner_channels: Union[int, str] = 1  # AGW's code: 1; "half" = C/2 (the non-local paper's)
    gem: bool = True
    bn_neck: bool = True
    shared_fc: bool = True                     # Eq. 5 writes one FC for both modalities
    fc_units: int = 256
    mlp_units: Tuple[int, ...] = (128,)
    last_stride: int = 1
    backbone: str = "torchvision"              # torchvision (ResNet-50 v1.5, AGW) | keras (v1, conv biases)
    backbone_weights: str = "torchvision"      # torchvision | imagenet (Keras') | a weights file | none
    fused_batch_norm: bool = True              # TF's fused BN kernel (same weights, faster)
    width: float = 1.0                         # channel multiplier of stems and trunk; 1 = ResNet-50 (the paper)
    stage_blocks: Tuple[int, ...] = (3, 4, 6, 3)  # bottlenecks in conv2_x..conv5_x; (3, 4, 6, 3) = ResNet-50
    init_from: str = "none"                    # a run folder or AGW checkpoint to start from (kdem_tf.model.init_from)
    # Beyond the paper (the influence-factor collapse study, docs/training.md): the factors are
    # softmax(logits / T); 1.0 is Eq. 5.
    factor_temperature: float = 1.0


@dataclasses.dataclass(frozen=True)
class LossConfig:
    ablation: str = "full"                     # baseline | kdem | kdem_div | kdem_con | full (Table 3)
    id_weight: float = 1.0                     # λ1
    wrt_weight: float = 1.0                    # λ2
    div_weight: float = 1.0                    # λ3
    con_weight: float = 0.1                    # λ4
    # Beyond the paper (the influence-factor collapse study, docs/training.md): the factors mi_m weight
    # L_con as constants (stop-gradient; L_con still reaches them through F_t); False is Eq. 8 as written.
    con_detach_factors: bool = False


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    base_lr: float = 0.1                       # new layers
    backbone_lr: float = 0.01                  # pretrained backbone
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    milestones: Tuple[int, ...] = (20, 50)
    epochs: int = 80
    steps_per_epoch: Optional[int] = None      # None: the sampler's epoch (AGW)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    seed: int = 0
    eval_every: int = 10                       # epochs; 0 disables
    checkpoint_every: int = 1                  # epochs between checkpoints (the last step is always saved)
    mixed_precision: str = "float32"           # float32 (AGW) | auto | mixed_bfloat16 | mixed_float16
    jit_compile: str = "auto"                  # auto | on | off


PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {},
    # Small images, random init, short schedule: trains on the synthetic data on a CPU.
    # Why these values (measured on the 40-id synthetic SYSU set, see resnet.build_trunk's
    # zero_init_residual): from random init the head needs a 10x lower rate than the
    # trunk (at 0.01-0.05 the classifier over 2048-d BN-neck features overshoots, id_loss
    # rose to 6-20 with chance accuracy); P=8 identities give more negatives per batch;
    # no random erasing (it slowed learning, below); non_local=False and
    # last_stride=2 are demo speed choices (the paper preset keeps AGW's settings).
    "demo": {
        # 96x48: at 64x32 the blurred infrared images lose the garment patterns (40 epochs:
        # mAP 43.6 at 64x32, 74.0 at 96x48 on 100 synthetic ids, 75 for training; random
        # erasing lowered it, 35.0 vs 45.7 at 40 of 80 epochs; measured on the 2-core CPU).
        "data": {"image_size": (96, 48), "num_identities": 8, "num_instances": 2, "random_erasing": 0.0},
        # The Keras v1 backbone at half width (model.width=0.5: a quarter of ResNet-50's FLOPs and
        # weights, 2.9x faster steps on the 2-core CPU), two bottlenecks per stage (8 of ResNet-50's
        # 16: steps 0.30 s instead of 0.41-0.51, tracing 10 s instead of 17-20; test mAP 64.1 / 62.8 /
        # 59.8 for seeds 0 / 1 / 2 against 65.0 / 66.7 / 40.3 with 16) and `auto` precision.
        "model": {"backbone": "keras", "backbone_weights": "none", "non_local": False, "last_stride": 2,
                  "width": 0.5, "stage_blocks": (2, 2, 2, 2)},
        # 20 epochs x 20 steps at twice the rates the 30-epoch width-1 schedule used (same data, seed 0:
        # mAP 65.0 vs 59.5 at the old rates). Figures: docs/training.md ("The demo preset").
        "optim": {"base_lr": 0.006, "backbone_lr": 0.06, "warmup_epochs": 2, "milestones": (14, 18),
                  "epochs": 20, "steps_per_epoch": 20},
        "eval_every": 10,
        "checkpoint_every": 5,  # a checkpoint (~45 MB with the momentum slots) every 5 epochs, not each
        "mixed_precision": "auto",
    },
    # For tests: a handful of steps on a quarter-width network (1/16 of ResNet-50's conv FLOPs
    # and weights: 512-d embeddings) with one bottleneck per stage (4 of ResNet-50's 16, the same
    # stages, strides and names: building and tracing the step take ~2.5x less, which is most of a
    # test's training time); tests of ResNet-50's own shapes or weights set model.width=1 and
    # model.stage_blocks=3,4,6,3.
    "tiny": {
        "data": {"image_size": (64, 32), "num_identities": 2, "num_instances": 2, "random_erasing": 0.5},
        "model": {"backbone_weights": "none", "width": 0.25, "stage_blocks": (1, 1, 1, 1)},
        "optim": {"warmup_epochs": 1, "milestones": (2,), "epochs": 2, "steps_per_epoch": 2},
        "eval_every": 0,
        "mixed_precision": "auto",
    },
}

_SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "optim": OptimConfig}


class ConfigError(ValueError):
    """An unknown key, a bad value or an unknown preset; the message names it."""


def _coerce(cls, name: str, value: Any, where: str) -> Any:
    """Converts YAML/flag values to the field's type (lists → tuples, "64x32" → (64, 32))."""
    default = {f.name: f.default for f in dataclasses.fields(cls)}[name]
    if name == "non_local_inner_channels":  # a positive integer or "half"
        return value if value == "half" else _coerce_int(value, where)
    if isinstance(default, tuple) or name in ("milestones", "mlp_units", "image_size", "stage_blocks"):
        if isinstance(value, str):
            value = [v for v in value.replace("x", ",").split(",") if v.strip()]
        elif isinstance(value, (int, float)):  # "optim.milestones=1" parses as a number
            value = [value]
        try:
            return tuple(int(v) for v in value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a list of integers, got {value!r}") from None
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ConfigError(f"{where}: expected a boolean, got {value!r}")
            return value.lower() in ("true", "1", "yes", "on")
        return bool(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, int) or (default is None and name == "steps_per_epoch"):
        return None if value in (None, "none", "None") else int(value)
    return value


def _coerce_int(value: Any, where: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected an integer, got {value!r}") from None


def _apply(config: TrainConfig, overrides: Dict[str, Any], where: str) -> TrainConfig:
    top = {}
    for key, value in overrides.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: section {key!r} must be a mapping")
            cls = _SECTIONS[key]
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = set(value) - names
            if unknown:
                raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)} in section {key!r}; known: {sorted(names)}")
            section = getattr(config, key)
            top[key] = dataclasses.replace(section, **{k: _coerce(cls, k, v, f"{where}: {key}.{k}") for k, v in value.items()})
        elif key in {f.name for f in dataclasses.fields(TrainConfig)}:
            top[key] = _coerce(TrainConfig, key, value, f"{where}: {key}") if key != "mixed_precision" and key != "jit_compile" else str(value)
        else:
            raise ConfigError(f"{where}: unknown key {key!r}")
    return dataclasses.replace(config, **top)


def load_config(preset: str = "paper", path: Optional[str] = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """preset → YAML file → `section.key=value` overrides, each layer over the last."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    config = _apply(TrainConfig(), PRESETS[preset], f"preset {preset}")
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        config = _apply(config, data, path)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, value = item.split("=", 1)
        parts = dotted.split(".")
        nested: Dict[str, Any] = {parts[-1]: yaml.safe_load(value) if value else value}
        for part in reversed(parts[:-1]):
            nested = {part: nested}
        config = _apply(config, nested, f"--set {item}")
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    from kdem_tf.architecture import ABLATION_ROWS  # one list of Table 3 rows

    if config.loss.ablation not in ABLATION_ROWS:
        raise ConfigError(f"loss.ablation must be one of {sorted(ABLATION_ROWS)}, got {config.loss.ablation!r}")
    if config.mixed_precision not in ("auto", "float32", "mixed_bfloat16", "mixed_float16"):
        raise ConfigError(f"mixed_precision: unknown policy {config.mixed_precision!r}")
    if config.jit_compile not in ("auto", "on", "off"):
        raise ConfigError(f"jit_compile must be auto, on or off, got {config.jit_compile!r}")
    if min(config.data.image_size) < 32:
        raise ConfigError(f"data.image_size {config.data.image_size} is below 32 pixels")
    if config.optim.epochs < 1:
        raise ConfigError("optim.epochs must be at least 1")
    if not config.optim.base_lr > 0 or config.optim.backbone_lr < 0:
        raise ConfigError(f"optim.base_lr must be > 0 and optim.backbone_lr >= 0 (the backbone's rate is a "
                          f"multiple of the head's), got {config.optim.base_lr} and {config.optim.backbone_lr}")
    if not config.model.factor_temperature > 0:
        raise ConfigError(f"model.factor_temperature must be > 0, got {config.model.factor_temperature}")
    if config.checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be at least 1 (epochs), got {config.checkpoint_every}")
    from kdem_tf.image_contract import ContractError, resolve_normalization

    try:
        resolve_normalization(config.data.normalization, config.model.backbone_weights)
    except ContractError as error:
        raise ConfigError(str(error)) from None
    _validate_model(config.model)


def _validate_model(model: ModelConfig) -> None:
    """The backbone variant, its width and depth, its weights and the non-local width; weights must fit the
    backbone (ResNet-50's width and depth)."""
    from kdem_tf.image_contract import ContractError
    from kdem_tf.architecture import (BACKBONES, RESNET50_BLOCKS, backbone_for_weights, check_inner_channels,
                                      check_stage_blocks)

    if not 0.0 < model.width <= 1.0:
        raise ConfigError(f"model.width must be in (0, 1] (1 = ResNet-50's channels), got {model.width}")
    if model.width != 1.0 and str(model.backbone_weights).lower() not in ("none", ""):
        raise ConfigError(f"model.width={model.width}: ImageNet weights exist for width 1 only; set "
                          f"model.backbone_weights=none to train a narrower network from random init")
    try:
        check_stage_blocks(model.stage_blocks, "model.stage_blocks")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if tuple(model.stage_blocks) != RESNET50_BLOCKS and str(model.backbone_weights).lower() not in ("none", ""):
        raise ConfigError(f"model.stage_blocks={list(model.stage_blocks)}: ImageNet weights exist for ResNet-50's "
                          f"{list(RESNET50_BLOCKS)} only; set model.backbone_weights=none to train a shallower "
                          f"network from random init")
    if model.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone must be one of {list(BACKBONES)}, got {model.backbone!r}")
    try:
        check_inner_channels(model.non_local_inner_channels, "model.non_local_inner_channels")
        fits = backbone_for_weights(model.backbone_weights)
    except (ValueError, ContractError) as error:
        raise ConfigError(str(error)) from None
    if fits is not None and fits != model.backbone:
        raise ConfigError(f"model.backbone_weights={model.backbone_weights!r} fit model.backbone={fits!r}, not "
                          f"model.backbone={model.backbone!r}; set model.backbone={fits} or other weights")


def to_dict(config: TrainConfig) -> Dict[str, Any]:
    def plain(value):
        if isinstance(value, tuple):
            return list(value)
        return value
    return {k: ({kk: plain(vv) for kk, vv in v.items()} if isinstance(v, dict) else plain(v))
            for k, v in dataclasses.asdict(config).items()}


def to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def from_yaml_text(text: str) -> TrainConfig:
    """Reloads a config written by `to_yaml` (a run folder's config.yaml)."""
    return _apply(TrainConfig(), yaml.safe_load(text), "config.yaml")
