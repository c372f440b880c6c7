"""KDEMTrainer: one real train step, test_step, ablation switches, the optimizer setup."""
import keras
import numpy as np
import pytest

from kdem_tf.config import ModelConfig
from kdem_tf.model import ABLATION_ROWS, KDEMTrainer, WarmupMultiStepSchedule, build_kdem_models, build_optimizer
from tests.conftest import TEST_STAGE_BLOCKS

IMAGE_SIZE = (64, 32)
NUM_CLASSES = 4
WIDTH = 0.25  # model.width: nothing here depends on ResNet-50's channel count (1/16 of its FLOPs)


@pytest.fixture(scope="module")
def train_model():
    keras.utils.set_random_seed(1)
    model, _ = build_kdem_models(ModelConfig(backbone_weights="none", width=WIDTH, stage_blocks=TEST_STAGE_BLOCKS), NUM_CLASSES, IMAGE_SIZE)
    return model


@pytest.fixture(scope="module")
def untrained_models():
    """Models no test trains: random-init BN moving statistics are only valid before any step."""
    keras.utils.set_random_seed(2)
    kdem_model, _ = build_kdem_models(ModelConfig(backbone_weights="none", width=WIDTH, stage_blocks=TEST_STAGE_BLOCKS), NUM_CLASSES, IMAGE_SIZE)
    baseline_model, _ = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=WIDTH, stage_blocks=TEST_STAGE_BLOCKS), NUM_CLASSES, IMAGE_SIZE, kdem=False)
    return {True: kdem_model, False: baseline_model}


def batch(seed=0, pairs=2):
    rng = np.random.default_rng(seed)
    shape = (pairs,) + IMAGE_SIZE + (3,)
    labels = np.arange(pairs, dtype="int32") % NUM_CLASSES
    inputs = {"visible": rng.normal(size=shape).astype("float32"), "infrared": rng.normal(size=shape).astype("float32")}
    return inputs, {"label_v": labels, "label_i": labels.copy()}


def test_one_train_step_runs_reports_finite_metrics_and_updates_weights(train_model):
    setup = build_optimizer(base_lr=0.1, backbone_lr=0.01, warmup_epochs=0, steps_per_epoch=1)
    trainer = KDEMTrainer(train_model, backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
    trainer.compile(optimizer=setup.optimizer)
    watched = {
        "visible_stem": train_model.get_layer("visible_stem").get_layer("conv1_conv").kernel,
        "infrared_stem": train_model.get_layer("infrared_stem").get_layer("conv1_conv").kernel,
        "kdem": train_model.get_layer("kdem").factor_logits.kernel,
        "trunk": train_model.get_layer("trunk").get_layer("conv4_block1_2_conv").kernel,
        "classifier": train_model.get_layer("classifier").kernel,
    }
    before = {name: variable.numpy().copy() for name, variable in watched.items()}
    inputs, labels = batch()
    metrics = trainer.train_on_batch(inputs, labels, return_dict=True)
    expected_names = {
        "loss", "id_loss", "wrt_loss", "div_loss", "con_loss", "id_accuracy", "wrt_precision", "mi_v_mean", "mi_v_std"
    }
    assert set(metrics) == expected_names
    for name, value in metrics.items():
        assert np.isfinite(value), name
    assert metrics["div_loss"] < 0 and metrics["con_loss"] > 0
    assert metrics["loss"] == pytest.approx(
        metrics["id_loss"] + metrics["wrt_loss"] + metrics["div_loss"] + 0.1 * metrics["con_loss"], rel=1e-5
    )
    for name, variable in watched.items():
        assert np.abs(variable.numpy() - before[name]).max() > 0, f"{name} did not change"


@pytest.mark.parametrize("row", sorted(ABLATION_ROWS))
def test_ablation_rows_drop_the_right_terms(untrained_models, row):
    switches = ABLATION_ROWS[row]
    model = untrained_models[switches["kdem"]]
    trainer = KDEMTrainer(
        model,
        use_diversity_loss=switches["use_diversity_loss"],
        use_consistency_loss=switches["use_consistency_loss"],
    )
    metrics = {name: float(value) for name, value in trainer.test_step(batch(seed=3)).items()}
    assert (metrics["div_loss"] != 0.0) == (switches["kdem"] and switches["use_diversity_loss"])
    assert (metrics["con_loss"] != 0.0) == (switches["kdem"] and switches["use_consistency_loss"])
    assert ("mi_v_mean" in metrics) == switches["kdem"]
    assert metrics["loss"] == pytest.approx(
        metrics["id_loss"] + metrics["wrt_loss"] + metrics["div_loss"] + 0.1 * metrics["con_loss"], rel=1e-5
    )


def test_gradient_scales_give_the_backbone_its_own_learning_rate(train_model):
    trainer = KDEMTrainer(train_model, backbone_lr_scale=0.1)
    variables = trainer.trainable_variables
    scales = trainer.gradient_scales(variables)
    head = {id(v) for name in ("bn_neck", "classifier", "kdem") for v in train_model.get_layer(name).trainable_weights}
    kdem_weights = len(train_model.get_layer("kdem").trainable_weights)
    assert kdem_weights >= 4  # the KDEM layer is new: it trains at the base learning rate
    assert len(head) == 2 + kdem_weights  # bn_neck gamma (no beta: center=False), classifier kernel, KDEM
    for variable, scale in zip(variables, scales):
        assert scale == (1.0 if id(variable) in head else 0.1)


def test_warmup_multistep_schedule_matches_agw():
    schedule = WarmupMultiStepSchedule(0.1, steps_per_epoch=10, warmup_epochs=10, milestones=(20, 50))
    expected = {0: 0.01, 9: 0.01, 10: 0.02, 95: 0.1, 100: 0.1, 199: 0.1, 200: 0.01, 499: 0.01, 500: 0.001, 799: 0.001}
    for step, learning_rate in expected.items():
        assert float(schedule(step)) == pytest.approx(learning_rate, rel=1e-6), step
    setup = build_optimizer(base_lr=0.1, backbone_lr=0.01, steps_per_epoch=10)
    assert setup.backbone_lr_scale == pytest.approx(0.1) and setup.weight_decay == 5e-4
    assert setup.optimizer.nesterov and setup.optimizer.momentum == 0.9


def test_two_sgd_steps_equal_nesterov_on_scaled_gradients_with_coupled_weight_decay():
    """w <- w - lr * (g' + mu * buf) with buf <- mu * buf + g', g' = scale * (g + wd * w), the
    gradient g of the Eq. 11 total from a separate tape (PyTorch's SGD with nesterov=True)."""
    import tensorflow as tf

    from kdem_tf.model.losses import total_loss

    keras.utils.set_random_seed(4)
    model, _ = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=WIDTH, stage_blocks=TEST_STAGE_BLOCKS), NUM_CLASSES, IMAGE_SIZE)
    lr, wd, mu, backbone_lr = 0.05, 0.5, 0.9, 0.005  # wd large enough to matter in the update
    setup = build_optimizer(base_lr=lr, backbone_lr=backbone_lr, momentum=mu, nesterov=True, weight_decay=wd,
                            warmup_epochs=0, milestones=(100,), steps_per_epoch=1)
    trainer = KDEMTrainer(model, backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
    trainer.compile(optimizer=setup.optimizer)
    watched = {"classifier": model.get_layer("classifier").kernel,  # head: scale 1
               "kdem": model.get_layer("kdem").factor_logits.kernel,  # head: scale 1
               "visible_stem": model.get_layer("visible_stem").get_layer("conv1_conv").kernel,  # backbone
               "trunk": model.get_layer("trunk").get_layer("conv4_block1_2_conv").kernel}
    scale = {"classifier": 1.0, "kdem": 1.0, "visible_stem": backbone_lr / lr, "trunk": backbone_lr / lr}
    inputs, labels = batch(seed=9, pairs=4)
    buffers = {name: 0.0 for name in watched}
    for step in range(2):
        weights = {name: v.numpy().astype(np.float64) for name, v in watched.items()}
        with tf.GradientTape() as tape:
            losses = total_loss(model(inputs, training=True), labels["label_v"], labels["label_i"])
        gradients = dict(zip(watched, (g.numpy().astype(np.float64)
                                       for g in tape.gradient(losses["total"], list(watched.values())))))
        trainer.train_on_batch(inputs, labels)
        for name, variable in watched.items():
            g = scale[name] * (gradients[name] + wd * weights[name])
            buffers[name] = mu * buffers[name] + g
            expected_update = -lr * (g + mu * buffers[name])
            update = variable.numpy().astype(np.float64) - weights[name]
            assert np.abs(expected_update).max() > 0, name
            np.testing.assert_allclose(update, expected_update, rtol=2e-3,
                                       atol=2e-3 * np.abs(expected_update).max(), err_msg=f"{name}, step {step + 1}")
