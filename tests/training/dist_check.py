"""One training step on two logical CPU devices vs one device, same data per replica.

Run as a script (logical devices must be configured before TensorFlow starts).
Prints a JSON line: losses of both runs, the largest weight difference after the step, and
the largest difference of the two steps relative to the step, per variable.
"""
import json

import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from kdem_tf import config as config_lib  # noqa: E402
from kdem_tf.config import ModelConfig
from kdem_tf.model.model import build_kdem_models  # noqa: E402
from kdem_tf.model.optim import build_optimizer  # noqa: E402
from kdem_tf.model.trainer import KDEMTrainer  # noqa: E402
from kdem_tf.train import make_distributed_step  # noqa: E402


def one_step(devices, initial_weights, batch):
    strategy = tf.distribute.MirroredStrategy(devices)
    with strategy.scope():
        # Quarter width, one block per stage (the tiny preset's): the replica arithmetic does not
        # depend on the network's size.
        train_model, _ = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=0.25, stage_blocks=config_lib.load_config("tiny").model.stage_blocks), 4, (64, 32))
        if initial_weights is not None:
            train_model.set_weights(initial_weights)
        setup = build_optimizer(base_lr=0.01, backbone_lr=0.001, steps_per_epoch=1, warmup_epochs=0)
        trainer = KDEMTrainer(train_model, backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
        trainer.compile(optimizer=setup.optimizer)
        setup.optimizer.build(trainer.trainable_variables)  # as kdem_tf.train: slots exist before the step
    start = [np.array(w) for w in train_model.get_weights()]
    # Every replica gets the same whole P×K batch: N replicas must then take exactly the
    # step of one replica (loss / N per replica, gradients summed).
    values = strategy.experimental_distribute_values_from_function(lambda context: batch)
    metrics = make_distributed_step(strategy, trainer)(values)
    return start, {k: float(v) for k, v in metrics.items()}, [np.array(w) for w in train_model.get_weights()]


keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
labels = np.repeat(np.arange(2), 2).astype(np.int32)
batch = ({"visible": tf.constant(rng.normal(size=(4, 64, 32, 3)).astype("float32")),
          "infrared": tf.constant(rng.normal(size=(4, 64, 32, 3)).astype("float32"))},
         {"label_v": tf.constant(labels), "label_i": tf.constant(labels)})
start, one_metrics, one_weights = one_step(["/cpu:0"], None, batch)
_, two_metrics, two_weights = one_step(["/cpu:0", "/cpu:1"], start, batch)
change = max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, start))
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, two_weights))
# Per variable, the difference of the two steps relative to the step itself: a step that is
# half or twice as large on two replicas gives 0.5 or 1, whatever the learning rate. Variables
# whose step is under 1e-5 are left out: float32 rounding of the weights (~1e-8) dominates there.
moved = [(a, b, s) for a, b, s in zip(one_weights, two_weights, start) if np.max(np.abs(a - s)) > 1e-5]
relative = max(float(np.max(np.abs(b - a)) / np.max(np.abs(a - s))) for a, b, s in moved)
moved_variables = len(moved)
print(json.dumps({"one": one_metrics, "two": two_metrics, "max_weight_change": change, "max_weight_diff": diff,
                  "max_relative_step_diff": relative, "moved_variables": moved_variables,
                  "variables": len(start)}))
