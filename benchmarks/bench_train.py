"""Training-step speed and memory: plain ResNet-50 vs the two-stream baseline vs full KDEM.

    python -m benchmarks.bench_train [--image-size 288x144] [--pairs 8] [--steps 3] [--xla] [--json OUT]

Each configuration runs in its own process, so each peak memory (max RSS) is its own.
Figures (issue #3): stream-images/s of a step (plain ResNet-50: images; baseline: 2 per
pair; KDEM: 3 per pair, the enhanced stream included), peak RSS, inference images/s,
float32 vs mixed_bfloat16, XLA off (and on with --xla). Target: the KDEM step's
stream-images/s >= 90% of the plain ResNet-50 step's; bf16 >= 1.25x float32 on CPUs
with AVX512-BF16. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks.common import machine_info


def _time_steps(step, batch, steps: int) -> float:
    step(*batch)  # trace + first run
    started = time.time()
    for _ in range(steps):
        out = step(*batch)
    if isinstance(out, dict):  # wait for the last step's results
        next(iter(out.values())).numpy()
    return (time.time() - started) / steps


def run_one(kind: str, image_size, pairs: int, steps: int, policy: str, xla: bool) -> dict:
    import numpy as np
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(0)
    h, w = image_size
    labels = np.repeat(np.arange(pairs // 2), 2).astype(np.int32)
    images = lambda n: tf.constant(rng.normal(size=(n, h, w, 3)).astype("float32"))  # noqa: E731
    result = {"kind": kind, "policy": policy, "xla": xla, "pairs": pairs}
    if kind == "resnet50":
        model = keras.applications.ResNet50(weights=None, input_shape=(h, w, 3), classes=pairs // 2)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss="sparse_categorical_crossentropy", jit_compile=xla)
        x, y = images(2 * pairs), np.repeat(np.arange(pairs // 2), 4).astype(np.int32)
        seconds = _time_steps(lambda a, b: model.train_on_batch(a, b), (x, y), steps)
        result["stream_images_per_second"] = round(2 * pairs / seconds, 2)
        infer = tf.function(lambda a: model(a, training=False), jit_compile=xla)
        result["inference_images_per_second"] = round(2 * pairs / _time_steps(infer, (x,), steps), 2)
    else:
        from kdem_tf.model.model import build_kdem_models
        from kdem_tf.model.optim import build_optimizer
        from kdem_tf.model.trainer import ABLATION_ROWS, KDEMTrainer

        row = ABLATION_ROWS["baseline" if kind == "baseline" else "full"]
        train_model, inference_model = build_kdem_models(num_classes=pairs // 2, image_size=image_size,
                                                         kdem=row["kdem"])
        setup = build_optimizer(steps_per_epoch=10)
        trainer = KDEMTrainer(train_model, use_diversity_loss=row["use_diversity_loss"],
                              use_consistency_loss=row["use_consistency_loss"],
                              backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
        trainer.compile(optimizer=setup.optimizer, jit_compile=xla)
        setup.optimizer.build(trainer.trainable_variables)
        data = ({"visible": images(pairs), "infrared": images(pairs)},
                {"label_v": tf.constant(labels), "label_i": tf.constant(labels)})
        step = tf.function(trainer.train_step, jit_compile=xla)
        seconds = _time_steps(lambda d: step(d), (data,), steps)
        streams = 3 if row["kdem"] else 2
        result["stream_images_per_second"] = round(streams * pairs / seconds, 2)
        infer = tf.function(lambda a, m: inference_model({"image": a, "modality": m}, training=False),
                            jit_compile=xla)
        x = images(2 * pairs)
        modality = tf.constant(np.arange(2 * pairs) % 2, tf.int32)
        result["inference_images_per_second"] = round(2 * pairs / _time_steps(infer, (x, modality), steps), 2)
    result["step_seconds"] = round(seconds, 3)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024, 2)
    return result


def main() -> None:
    from kdem_tf.data.preprocess import parse_image_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=parse_image_size, default=(288, 144))
    parser.add_argument("--pairs", type=int, default=8, help="visible/infrared pairs per step (P*K)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--xla", action="store_true", help="also measure jit_compile=True (slow to compile)")
    parser.add_argument("--json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # kind,policy,xla: run one config in this process
    args = parser.parse_args()
    if args.one:
        kind, policy, xla = args.one.split(",")
        print(json.dumps(run_one(kind, args.image_size, args.pairs, args.steps, policy, xla == "1")))
        return
    configs = [(k, p, "0") for k in ("resnet50", "baseline", "kdem") for p in ("float32", "mixed_bfloat16")]
    if args.xla:
        configs += [(k, "float32", "1") for k in ("resnet50", "kdem")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    results, failures = [], []
    for kind, policy, xla in configs:
        cmd = [sys.executable, "-m", "benchmarks.bench_train", "--one", f"{kind},{policy},{xla}",
               "--image-size", "x".join(map(str, args.image_size)), "--pairs", str(args.pairs),
               "--steps", str(args.steps)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{kind} {policy} xla={xla}: failed\n{out.stderr[-1500:]}")
            last = next((x for x in reversed(out.stderr.splitlines()) if x.strip()), f"exit {out.returncode}")
            failures.append({"kind": kind, "policy": policy, "xla": xla == "1", "error": last.strip()})
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]))
    by = {(r["kind"], r["policy"], r["xla"]): r for r in results}
    summary = {}
    plain, kdem = by.get(("resnet50", "float32", False)), by.get(("kdem", "float32", False))
    if plain and kdem:
        summary["kdem_over_resnet50_float32"] = round(kdem["stream_images_per_second"] / plain["stream_images_per_second"], 3)
    kdem_bf16 = by.get(("kdem", "mixed_bfloat16", False))
    if kdem and kdem_bf16:
        summary["kdem_bf16_over_float32"] = round(kdem_bf16["stream_images_per_second"] / kdem["stream_images_per_second"], 3)
    kdem_xla = by.get(("kdem", "float32", True))
    if kdem and kdem_xla:
        summary["kdem_xla_over_no_xla"] = round(kdem_xla["stream_images_per_second"] / kdem["stream_images_per_second"], 3)
    print("\n" + json.dumps(summary, indent=2))
    print("targets: KDEM/ResNet-50 stream-images/s >= 0.90; KDEM bf16/float32 >= 1.25")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "image_size": list(args.image_size), "results": results,
                       "summary": summary, "failures": failures}, f, indent=2)


if __name__ == "__main__":
    main()
