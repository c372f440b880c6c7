"""Training-step speed and memory: plain ResNet-50 vs the two-stream baseline vs full KDEM.

    python -m benchmarks.bench_train [--image-size 288x144] [--pairs 8] [--steps 3] [--xla] [--json OUT]

Each configuration runs in its own process, so each peak memory (max RSS) is its own.
The baseline and KDEM models are the `paper` preset's architecture (build_kdem_models'
defaults = kdem_tf.config.ModelConfig: torchvision's ResNet-50 v1.5, last stride 1,
AGW's 5 non-local blocks with 1 inner channel, GeM, BN-neck), randomly initialised;
the plain ResNet-50 reference is keras.applications.ResNet50 (v1).
Figures (issue #3): stream-images/s of a step (plain ResNet-50: images; baseline: 2 per
pair; KDEM: 3 per pair, the enhanced stream included), peak RSS, inference images/s,
float32 vs mixed_bfloat16, XLA off (and on with --xla), forward GFLOPs per stream-image,
and float32 variants of the KDEM step that show where its time goes (VARIANTS). Target: the KDEM step's
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


# Speed variants of the full KDEM step (float32), to show where the time goes:
# label -> build_kdem_models arguments.
VARIANTS = {
    "kdem_keras_bn": {"fused_batch_norm": False},         # Keras 3's op-by-op BatchNormalization
    "kdem_resnet50_flops": {"non_local": False, "last_stride": 2},  # same trunk FLOPs as plain ResNet-50
    "kdem_non_local_half": {"non_local_inner_channels": "half"},  # C/2 inner channels (the non-local paper's)
    "kdem_keras_v1": {"backbone": "keras"},                # keras.applications' v1 trunk (conv biases)
}


def forward_gflops(fn, *specs) -> float:
    """Forward floating-point operations of `fn` traced on `specs`, in GFLOPs (TF's profiler)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    graph = convert_variables_to_constants_v2(tf.function(fn).get_concrete_function(*specs)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops / 1e9


def run_one(kind: str, image_size, pairs: int, steps: int, policy: str, xla: bool, model_args: dict) -> dict:
    import numpy as np
    import keras
    import tensorflow as tf

    keras.mixed_precision.set_global_policy(policy)
    rng = np.random.default_rng(0)
    h, w = image_size
    labels = np.repeat(np.arange(pairs // 2), 2).astype(np.int32)
    images = lambda n: tf.constant(rng.normal(size=(n, h, w, 3)).astype("float32"))  # noqa: E731
    result = {"kind": kind, "policy": policy, "xla": xla, "pairs": pairs, "model_args": model_args}
    if kind == "resnet50":
        model = keras.applications.ResNet50(weights=None, input_shape=(h, w, 3), classes=pairs // 2)
        model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                      loss="sparse_categorical_crossentropy", jit_compile=xla)
        x, y = images(2 * pairs), np.repeat(np.arange(pairs // 2), 4).astype(np.int32)
        seconds = _time_steps(lambda a, b: model.train_on_batch(a, b), (x, y), steps)
        result["stream_images_per_second"] = round(2 * pairs / seconds, 2)
        count_flops = lambda: forward_gflops(lambda a: model(a, training=False), tf.TensorSpec((1, h, w, 3)))  # noqa: E731
        infer = tf.function(lambda a: model(a, training=False), jit_compile=xla)
        result["inference_images_per_second"] = round(2 * pairs / _time_steps(infer, (x,), steps), 2)
    else:
        from kdem_tf.model.model import build_kdem_models
        from kdem_tf.model.optim import build_optimizer
        from kdem_tf.model.trainer import ABLATION_ROWS, KDEMTrainer

        row = ABLATION_ROWS["baseline" if kind == "baseline" else "full"]
        train_model, inference_model = build_kdem_models(num_classes=pairs // 2, image_size=image_size,
                                                         kdem=row["kdem"], **model_args)
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
        one = tf.TensorSpec((1, h, w, 3))
        count_flops = lambda: forward_gflops(  # noqa: E731
            lambda v, i: train_model({"visible": v, "infrared": i}, training=False), one, one) / streams
        infer = tf.function(lambda a, m: inference_model({"image": a, "modality": m}, training=False),
                            jit_compile=xla)
        x = images(2 * pairs)
        modality = tf.constant(np.arange(2 * pairs) % 2, tf.int32)
        result["inference_images_per_second"] = round(2 * pairs / _time_steps(infer, (x, modality), steps), 2)
    result["step_seconds"] = round(seconds, 3)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024, 2)
    result["forward_gflops_per_stream_image"] = round(count_flops(), 2)  # after the RSS: tracing costs memory
    return result


def main() -> None:
    from kdem_tf.image_contract import parse_size as parse_image_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=parse_image_size, default=(288, 144))
    parser.add_argument("--pairs", type=int, default=8, help="visible/infrared pairs per step (P*K)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--xla", action="store_true", help="also measure jit_compile=True (slow to compile)")
    parser.add_argument("--no-variants", action="store_true", help="skip the float32 speed variants of KDEM")
    parser.add_argument("--kinds", default="resnet50,baseline,kdem",
                        help="comma-separated subset of resnet50, baseline, kdem (float32 and bfloat16 each)")
    parser.add_argument("--json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # kind,policy,xla: run one config in this process
    parser.add_argument("--model-args", default="{}", help=argparse.SUPPRESS)  # JSON for build_kdem_models
    args = parser.parse_args()
    if args.one:
        kind, policy, xla = args.one.split(",")
        print(json.dumps(run_one(kind, args.image_size, args.pairs, args.steps, policy, xla == "1",
                                 json.loads(args.model_args))))
        return
    # (label, kind, policy, xla, build_kdem_models arguments)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - {"resnet50", "baseline", "kdem"})
    if unknown:
        parser.error(f"--kinds: unknown {unknown}; known: resnet50, baseline, kdem")
    configs = [(k, k, p, "0", {}) for k in kinds for p in ("float32", "mixed_bfloat16")]
    if not args.no_variants:
        configs += [(label, "kdem", "float32", "0", extra) for label, extra in VARIANTS.items()]
    if args.xla:
        configs += [(k, k, "float32", "1", {}) for k in ("resnet50", "kdem")]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    results, failures = [], []
    for label, kind, policy, xla, extra in configs:
        cmd = [sys.executable, "-m", "benchmarks.bench_train", "--one", f"{kind},{policy},{xla}",
               "--model-args", json.dumps(extra), "--image-size", "x".join(map(str, args.image_size)),
               "--pairs", str(args.pairs), "--steps", str(args.steps)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{label} {policy} xla={xla}: failed\n{out.stderr[-1500:]}")
            last = next((x for x in reversed(out.stderr.splitlines()) if x.strip()), f"exit {out.returncode}")
            failures.append({"kind": label, "policy": policy, "xla": xla == "1", "error": last.strip()})
            continue
        results.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), kind=label))
        print(json.dumps(results[-1]))
    by = {(r["kind"], r["policy"], r["xla"]): r for r in results}
    summary = {}
    plain, kdem = by.get(("resnet50", "float32", False)), by.get(("kdem", "float32", False))
    if plain and kdem:
        summary["kdem_over_resnet50_float32"] = round(kdem["stream_images_per_second"] / plain["stream_images_per_second"], 3)
    kdem_bf16 = by.get(("kdem", "mixed_bfloat16", False))
    plain_bf16 = by.get(("resnet50", "mixed_bfloat16", False))
    if plain_bf16 and kdem_bf16:  # both in the precision `auto` picks on AVX512-BF16 CPUs
        summary["kdem_over_resnet50_bfloat16"] = round(
            kdem_bf16["stream_images_per_second"] / plain_bf16["stream_images_per_second"], 3)
    if kdem and kdem_bf16:
        summary["kdem_bf16_over_float32"] = round(kdem_bf16["stream_images_per_second"] / kdem["stream_images_per_second"], 3)
    if plain and kdem:
        # Work done per second relative to the reference: AGW's trunk (stride-1 conv5,
        # non-local blocks) does more work per image than a plain ResNet-50.
        summary["kdem_over_resnet50_gflops_per_second_float32"] = round(
            kdem["stream_images_per_second"] * kdem["forward_gflops_per_stream_image"]
            / (plain["stream_images_per_second"] * plain["forward_gflops_per_stream_image"]), 3)
    for label in VARIANTS:
        variant = by.get((label, "float32", False))
        if plain and variant:
            summary[f"{label}_over_resnet50_float32"] = round(
                variant["stream_images_per_second"] / plain["stream_images_per_second"], 3)
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
