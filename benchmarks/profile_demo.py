"""Where the demo's training time goes: one process, the demo preset, each part of a step timed alone.

    python -m benchmarks.profile_demo [--preset demo] [--steps 10] [--repeats 5] [--set k=v ...] [--json OUT]

Parts (seconds per training step, median of `--repeats` timings of `--steps` steps each):
- `input`: the P×K tf.data pipeline alone (synthetic TFRecords made here), batches pulled as training does;
- `forward`: the train model on one batch (training=True);
- `forward_backward`: forward + losses + gradients (one tape);
- `step`: the whole train step (+ gradient scaling and the SGD update);
- `optimizer`: step − forward_backward;
- `eval_per_image`: the inference model on evaluation batches, per image (periodic evaluations);
plus the implied epoch time and the preset's total (steps × step + evaluations). Prints figures;
asserts nothing. The spread (min..max over repeats, `benchmarks.common.time_repeats`) is printed
next to each median.
"""
from __future__ import annotations

import argparse
import json
import tempfile

from benchmarks.common import machine_info, time_repeats
from kdem_tf.datasets import sysu as sysu_ds


def _synthetic_tfrecords(folder: str, image_size, identities: int = 12) -> str:
    from kdem_tf.data import preprocess

    raw = f"{folder}/raw"
    sysu_ds.generate_synthetic(raw, identities=identities, images_per_camera=2, image_size=image_size, seed=0,
                            progress=False)
    out = f"{folder}/tfrecords"
    if preprocess.main(["--dataset", "sysu", "--data-root", raw, "--output", out]) not in (0, None):
        raise RuntimeError("preprocessing the profile's synthetic data failed")
    return out


def profile(preset: str, overrides, steps: int, repeats: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from kdem_tf import config as config_lib
    from kdem_tf.data import input_pipeline
    from kdem_tf.training.models import build_models
    from kdem_tf.model.optim import build_optimizer
    from kdem_tf.architecture import ABLATION_ROWS
    from kdem_tf.model.trainer import KDEMTrainer
    from kdem_tf.training.devices import choose_mixed_precision

    config = config_lib.load_config(preset, None, overrides)
    policy = choose_mixed_precision(config.mixed_precision)
    keras.mixed_precision.set_global_policy(policy)
    size = tuple(config.data.image_size)
    pairs = config.data.num_identities * config.data.num_instances
    row = ABLATION_ROWS[config.loss.ablation]
    classes = 75
    # The models train() builds for this config (backbone variant, weights, every model.* key).
    train_model, inference_model = build_models(config, classes, row, tf.distribute.get_strategy())
    setup = build_optimizer(base_lr=config.optim.base_lr, backbone_lr=config.optim.backbone_lr,
                            steps_per_epoch=config.optim.steps_per_epoch or 20)
    trainer = KDEMTrainer(train_model, use_diversity_loss=row["use_diversity_loss"],
                          use_consistency_loss=row["use_consistency_loss"],
                          backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
    trainer.compile(optimizer=setup.optimizer)
    setup.optimizer.build(trainer.trainable_variables)

    rng = np.random.default_rng(0)
    labels = tf.constant(np.repeat(np.arange(config.data.num_identities), config.data.num_instances), tf.int32)
    batch = ({"visible": tf.constant(rng.uniform(-2, 2, (pairs, *size, 3)), tf.float32),
              "infrared": tf.constant(rng.uniform(-2, 2, (pairs, *size, 3)), tf.float32)},
             {"label_v": labels, "label_i": labels})

    forward = tf.function(lambda: train_model(batch[0], training=True))

    @tf.function
    def forward_backward():
        with tf.GradientTape() as tape:
            _, losses = trainer.compute_losses(batch, training=True)
        grads = tape.gradient(losses["total"], trainer.trainable_variables)
        return {"loss": losses["total"], "g": tf.add_n([tf.reduce_sum(g) for g in grads if g is not None])}

    step = tf.function(lambda: trainer.train_step(batch))
    eval_images = tf.constant(rng.uniform(-2, 2, (64, *size, 3)), tf.float32)
    modality = tf.constant(np.arange(64) % 2, tf.int32)
    infer = tf.function(lambda: inference_model({"image": eval_images, "modality": modality}, training=False))

    result = {"preset": preset, "policy": policy, "image_size": list(size), "pairs_per_step": pairs}
    with tempfile.TemporaryDirectory() as folder:
        data = _synthetic_tfrecords(folder, size)
        split = input_pipeline.load_split(data, "train")
        dataset, _ = input_pipeline.train_dataset(split, size, config.data.num_identities,
                                                  config.data.num_instances, 1, 0,
                                                  erasing=config.data.random_erasing)
        iterator = iter(dataset)
        result["input"] = time_repeats(lambda: next(iterator)[0]["visible"], steps, repeats)
    result["forward"] = time_repeats(forward, steps, repeats)
    result["forward_backward"] = time_repeats(forward_backward, steps, repeats)
    result["step"] = time_repeats(step, steps, repeats)
    result["optimizer"] = round(result["step"]["median"] - result["forward_backward"]["median"], 4)
    per_batch = time_repeats(infer, max(1, steps // 2), repeats)
    result["eval_per_image"] = round(per_batch["median"] / 64, 5)
    steps_per_epoch = config.optim.steps_per_epoch or 20
    result["epoch_seconds_steps_only"] = round(steps_per_epoch * result["step"]["median"], 1)
    result["training_seconds_steps_only"] = round(config.optim.epochs * result["epoch_seconds_steps_only"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    result = profile(args.preset, args.set, args.steps, args.repeats)
    result["machine"] = machine_info()
    for key in ("input", "forward", "forward_backward", "step"):
        r = result[key]
        print(f"{key:18s} {r['median'] * 1000:8.1f} ms/step  (min {r['min'] * 1000:.1f}, max {r['max'] * 1000:.1f})")
    print(f"{'optimizer':18s} {result['optimizer'] * 1000:8.1f} ms/step  (step - forward_backward)")
    print(f"{'eval':18s} {result['eval_per_image'] * 1000:8.2f} ms/image")
    print(f"epoch (steps only) {result['epoch_seconds_steps_only']} s; all epochs {result['training_seconds_steps_only']} s "
          f"[{result['policy']}, {result['machine']['cpu']}, {result['machine']['cores']} cores]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
