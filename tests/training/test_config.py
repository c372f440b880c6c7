"""Config: presets, YAML and --set overrides, each layer over the last; errors name the key."""
from __future__ import annotations

import pytest

from kdem_tf import config as config_lib


def test_paper_defaults_match_the_paper_and_agw():
    c = config_lib.load_config("paper")
    assert c.data.image_size == (288, 144) and (c.data.num_identities, c.data.num_instances) == (8, 4)
    assert (c.loss.id_weight, c.loss.wrt_weight, c.loss.div_weight, c.loss.con_weight) == (1, 1, 1, 0.1)
    assert (c.optim.base_lr, c.optim.backbone_lr, c.optim.epochs) == (0.1, 0.01, 80)
    assert c.optim.milestones == (20, 50) and c.optim.warmup_epochs == 10 and c.optim.nesterov
    assert c.model.backbone_weights == "imagenet" and c.loss.ablation == "full"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  epochs: 40\n  milestones: [10, 30]\ndata:\n  image_size: [128, 64]\nseed: 3\n")
    c = config_lib.load_config("paper", str(path), ["optim.epochs=12", "loss.ablation=baseline",
                                                    "model.non_local=false", "data.image_size=96x48"])
    assert c.optim.epochs == 12 and c.optim.milestones == (10, 30) and c.seed == 3
    assert c.loss.ablation == "baseline" and c.model.non_local is False and c.data.image_size == (96, 48)


def test_one_element_lists_from_flags():
    c = config_lib.load_config("paper", overrides=["optim.milestones=30", "model.mlp_units=64"])
    assert c.optim.milestones == (30,) and c.model.mlp_units == (64,)


def test_round_trip_through_yaml():
    c = config_lib.load_config("demo", overrides=["optim.base_lr=0.02"])
    assert config_lib.from_yaml_text(config_lib.to_yaml(c)) == c


@pytest.mark.parametrize("override, message", [
    (["optim.epoch=3"], r"unknown key\(s\) \['epoch'\] in section 'optim'"),
    (["loss.ablation=everything"], "loss.ablation must be one of"),
    (["nonsense=1"], "unknown key 'nonsense'"),
    (["model.gem=maybe"], "expected a boolean"),
    (["optim.milestones=ten,20"], "optim.milestones: expected a list of integers"),
    (["optim.epochs"], "expected section.key=value"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.load_config("paper", overrides=override)


def test_unknown_preset():
    with pytest.raises(config_lib.ConfigError, match="unknown preset 'huge'"):
        config_lib.load_config("huge")
