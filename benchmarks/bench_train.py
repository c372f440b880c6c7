"""Training-step speed and memory: plain ResNet-50 vs the two-stream baseline vs full KDEM.

    python -m benchmarks.bench_train [--image-size 288x144] [--pairs 8] [--steps 3] [--repeats 5] [--xla]
                                     [--json OUT]

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
with AVX512-BF16. Each configuration's step (and inference) is timed `--repeats` times over `--steps`
steps (benchmarks.common.time_repeats): rates and ratios come from the median seconds per step, and a
target line says "met" / "not met" only where the ratio's margin to the target exceeds the combined
relative spread (max - min) / median of its two figures, else "within noise (cannot tell)".
Prints figures and verdicts; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

from benchmarks.common import combined_spread, target_verdict, time_repeats, verdict_line, write_json


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


def run_one(kind: str, image_size, pairs: int, steps: int, repeats: int, policy: str, xla: bool,
            model_args: dict) -> dict:
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
        step_timing = time_repeats(lambda: model.train_on_batch(x, y), steps, repeats)
        stream_images = 2 * pairs  # per step
        count_flops = lambda: forward_gflops(lambda a: model(a, training=False), tf.TensorSpec((1, h, w, 3)))  # noqa: E731
        infer = tf.function(lambda a: model(a, training=False), jit_compile=xla)
        infer_timing = time_repeats(lambda: infer(x), steps, repeats)
    else:
        from kdem_tf.config import ModelConfig
        from kdem_tf.model.model import build_kdem_models
        from kdem_tf.model.optim import build_optimizer
        from kdem_tf.architecture import ABLATION_ROWS
        from kdem_tf.model.trainer import KDEMTrainer

        row = ABLATION_ROWS["baseline" if kind == "baseline" else "full"]
        config = ModelConfig(**dict({"backbone_weights": "none"}, **model_args))
        train_model, inference_model = build_kdem_models(config, pairs // 2, image_size, kdem=row["kdem"])
        setup = build_optimizer(steps_per_epoch=10)
        trainer = KDEMTrainer(train_model, use_diversity_loss=row["use_diversity_loss"],
                              use_consistency_loss=row["use_consistency_loss"],
                              backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
        trainer.compile(optimizer=setup.optimizer, jit_compile=xla)
        setup.optimizer.build(trainer.trainable_variables)
        data = ({"visible": images(pairs), "infrared": images(pairs)},
                {"label_v": tf.constant(labels), "label_i": tf.constant(labels)})
        step = tf.function(trainer.train_step, jit_compile=xla)
        step_timing = time_repeats(lambda: step(data), steps, repeats)
        streams = 3 if row["kdem"] else 2
        stream_images = streams * pairs  # per step
        one = tf.TensorSpec((1, h, w, 3))
        count_flops = lambda: forward_gflops(  # noqa: E731
            lambda v, i: train_model({"visible": v, "infrared": i}, training=False), one, one) / streams
        infer = tf.function(lambda a, m: inference_model({"image": a, "modality": m}, training=False),
                            jit_compile=xla)
        x = images(2 * pairs)
        modality = tf.constant(np.arange(2 * pairs) % 2, tf.int32)
        infer_timing = time_repeats(lambda: infer(x, modality), steps, repeats)
    # Rates from the medians; the spreads (min..max over the repeats) beside them.
    result["step"], result["inference"] = step_timing, infer_timing
    result["step_seconds"] = round(step_timing["median"], 4)
    result["stream_images_per_second"] = round(stream_images / step_timing["median"], 2)
    result["inference_images_per_second"] = round(2 * pairs / infer_timing["median"], 2)
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024, 2)
    result["forward_gflops_per_stream_image"] = round(count_flops(), 2)  # after the RSS: tracing costs memory
    return result


# The issue's targets on ratios of stream-images/s: summary key -> (numerator, denominator, target, label).
TARGETS = {
    "kdem_over_resnet50_float32": (("kdem", "float32"), ("resnet50", "float32"), 0.90,
                                   "KDEM / ResNet-50 stream-images/s, float32"),
    "kdem_over_resnet50_bfloat16": (("kdem", "mixed_bfloat16"), ("resnet50", "mixed_bfloat16"), 0.90,
                                    "KDEM / ResNet-50 stream-images/s, mixed_bfloat16"),
    "kdem_bf16_over_float32": (("kdem", "mixed_bfloat16"), ("kdem", "float32"), 1.25,
                               "KDEM mixed_bfloat16 / float32 stream-images/s"),
}


def speed_ratio(a: dict, b: dict) -> float:
    """a's stream-images/s over b's, from the median seconds per step of each."""
    return round(a["stream_images_per_second"] / b["stream_images_per_second"], 3)


def summarize(results: list) -> dict:
    """Ratios of medians; per target, a verdict only where the margin exceeds the two figures' spread."""
    by = {(r["kind"], r["policy"], r["xla"]): r for r in results}
    summary, verdicts = {}, {}
    for key, (top, bottom, target, _) in TARGETS.items():
        a, b = by.get((*top, False)), by.get((*bottom, False))
        if a and b:
            summary[key] = speed_ratio(a, b)
            verdicts[key] = target_verdict(summary[key], target, combined_spread(a["step"], b["step"]))
    plain, kdem = by.get(("resnet50", "float32", False)), by.get(("kdem", "float32", False))
    if plain and kdem:
        # Work done per second relative to the reference: AGW's trunk (stride-1 conv5,
        # non-local blocks) does more work per image than a plain ResNet-50.
        summary["kdem_over_resnet50_gflops_per_second_float32"] = round(
            speed_ratio(kdem, plain) * kdem["forward_gflops_per_stream_image"]
            / plain["forward_gflops_per_stream_image"], 3)
    for label in VARIANTS:
        variant = by.get((label, "float32", False))
        if plain and variant:
            summary[f"{label}_over_resnet50_float32"] = speed_ratio(variant, plain)
    kdem_xla = by.get(("kdem", "float32", True))
    if kdem and kdem_xla:
        summary["kdem_xla_over_no_xla"] = speed_ratio(kdem_xla, kdem)
    summary["verdicts"] = verdicts
    return summary


def main() -> None:
    from kdem_tf.image_contract import parse_size as parse_image_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=parse_image_size, default=(288, 144))
    parser.add_argument("--pairs", type=int, default=8, help="visible/infrared pairs per step (P*K)")
    parser.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per configuration (median, min, max)")
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
        print(json.dumps(run_one(kind, args.image_size, args.pairs, args.steps, args.repeats, policy, xla == "1",
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
               "--pairs", str(args.pairs), "--steps", str(args.steps), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{label} {policy} xla={xla}: failed\n{out.stderr[-1500:]}")
            last = next((x for x in reversed(out.stderr.splitlines()) if x.strip()), f"exit {out.returncode}")
            failures.append({"kind": label, "policy": policy, "xla": xla == "1", "error": last.strip()})
            continue
        results.append(dict(json.loads(out.stdout.strip().splitlines()[-1]), kind=label))
        r = results[-1]
        print(f"{label} {policy} xla={xla}: {r['stream_images_per_second']} stream-images/s; step median "
              f"{r['step']['median']:.4g} s (min {r['step']['min']:.4g}, max {r['step']['max']:.4g}, "
              f"{r['step']['repeats']} repeats of {args.steps} steps)", flush=True)
    summary = summarize(results)
    print("\n" + json.dumps({k: v for k, v in summary.items() if k != "verdicts"}, indent=2))
    for key, verdict in summary["verdicts"].items():
        print(verdict_line(TARGETS[key][3], verdict))
    if args.json:
        write_json(args.json, {"image_size": list(args.image_size), "steps": args.steps, "repeats": args.repeats,
                               "results": results, "summary": summary, "failures": failures})


if __name__ == "__main__":
    main()
