"""Data-layer speed: Beam preprocessing images/s and tf.data P×K pipeline images/s.

    python -m benchmarks.bench_data [--identities 60] [--copies 5] [--image-size 288x144]
        [--original-size 432x216] [--identities-per-batch P] [--instances K] [--workers N]
        [--batches 6] [--steps 1] [--repeats 5] [--json OUT]

Targets (issue #2): preprocessing ≥ 200 images/s at 288x144 on a 2-core machine;
the input pipeline ≥ 5x the input images/s a KDEM training step consumes at the same size and
the same P×K (P, K default to kdem_tf.config.DataConfig's; the step rate is measured here too,
unless --skip-step). Both are the median of `--repeats` timings (benchmarks.common.time_repeats);
the ratio's verdict is "met" / "not met" only where its margin to 5x exceeds the two figures'
combined spread, else "within noise (cannot tell)". Each Beam mode's line gives the worker count
it ran with (in_memory: 1). Prints figures and verdicts; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks.common import combined_spread, target_verdict, time_repeats, verdict_line, write_json
from kdem_tf.datasets import sysu as sysu_ds


MODES = ("multi_threading", "in_memory", "multi_processing")


def replicate(root: str, copies: int) -> int:
    """Adds `copies` byte-identical copies of every image beside it (more files, same content),
    so throughput is measured on thousands of images without rendering each one."""
    import glob
    import shutil

    originals = sorted(glob.glob(os.path.join(root, "cam*", "*", "*.jpg")))
    for path in originals:
        folder, name = os.path.split(path)
        for c in range(copies):
            shutil.copyfile(path, os.path.join(folder, f"{c + 1}{name}"))
    return len(originals) * (copies + 1)


def workers_ran_with(options) -> int:
    """The worker count Beam's FnApiRunner resolves from `options` (direct_num_workers; 0 = all CPUs),
    i.e. the number of workers the pipeline really runs with, whatever was asked for."""
    import multiprocessing

    from apache_beam.options.pipeline_options import DirectOptions

    asked = options.view_as(DirectOptions).direct_num_workers
    return multiprocessing.cpu_count() if asked == 0 else (asked or 1)


def bench_preprocess(root: str, out: str, image_size, workers: int) -> dict:
    """Each local running mode on the same images (in_memory with 1 worker, the others with `workers`);
    the default mode's figures at the top level. Each mode's worker count is read back from the
    options it ran with."""
    import shutil
    from kdem_tf.data import preprocess

    splits = preprocess.plan_splits("sysu", root)
    modes = {}
    for mode in MODES:
        shutil.rmtree(out, ignore_errors=True)
        options = preprocess.local_pipeline_options([f"--direct_running_mode={mode}",
                                                     f"--direct_num_workers={1 if mode == 'in_memory' else workers}"])
        started = time.time()
        summary = preprocess.run_preprocess(splits, root, out, pipeline_options=options)
        wall = time.time() - started
        modes[mode] = {"images": summary["images_written"], "workers": workers_ran_with(options),
                       "wall_seconds": round(wall, 2), "images_per_second": round(summary["images_written"] / wall, 1)}
        print(f"preprocess {mode} with {modes[mode]['workers']} worker(s): {json.dumps(modes[mode])}", flush=True)
    default = preprocess.local_pipeline_options([]).get_all_options()["direct_running_mode"]
    return {**modes[default], "mode": default, "modes": modes}


def bench_input_pipeline(tfrecords: str, image_size, identities: int, instances: int, batches: int,
                         repeats: int) -> dict:
    """Input images/s (visible + infrared) of the P×K tf.data pipeline: median of `repeats` timings
    of `batches` batches each."""
    from kdem_tf.data import input_pipeline as ip

    split = ip.load_split(tfrecords, "train")
    dataset, _ = ip.train_dataset(split, image_size, num_identities=identities, num_instances=instances)
    iterator = iter(dataset)
    timing = time_repeats(lambda: next(iterator)[0]["visible"], batches, repeats)
    images = 2 * identities * instances  # per batch
    return {"batches_per_repeat": batches, "batch": timing,
            "input_images_per_second": round(images / timing["median"], 1)}


def bench_train_step(image_size, identities: int, instances: int, steps: int, repeats: int) -> dict:
    """Input images/s the full KDEM step (paper architecture, float32) consumes at the same P×K:
    median of `repeats` timings of `steps` steps each."""
    import numpy as np
    import tensorflow as tf
    from kdem_tf.config import ModelConfig
    from kdem_tf.model.model import build_kdem_models
    from kdem_tf.model.optim import build_optimizer
    from kdem_tf.model.trainer import KDEMTrainer

    pairs = identities * instances  # per step
    train_model, _ = build_kdem_models(ModelConfig(backbone_weights="none"), identities, image_size)
    setup = build_optimizer(steps_per_epoch=10)
    trainer = KDEMTrainer(train_model, backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
    trainer.compile(optimizer=setup.optimizer)
    step = tf.function(trainer.train_step)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(identities), instances).astype(np.int32)
    batch = ({"visible": rng.normal(size=(pairs, *image_size, 3)).astype("float32"),
              "infrared": rng.normal(size=(pairs, *image_size, 3)).astype("float32")},
             {"label_v": labels, "label_i": labels})
    timing = time_repeats(lambda: step(batch), steps, repeats)
    return {"steps_per_repeat": steps, "step": timing, "pairs_per_second": round(pairs / timing["median"], 2),
            "input_images_per_second": round(2 * pairs / timing["median"], 2),
            "stream_images_per_second": round(3 * pairs / timing["median"], 2)}


def main() -> None:
    from kdem_tf.config import DataConfig
    from kdem_tf.image_contract import parse_size

    batch_defaults = DataConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=60, help="synthetic identities rendered")
    parser.add_argument("--copies", type=int, default=5, help="extra copies of each image (see replicate)")
    parser.add_argument("--image-size", type=parse_size, default=(288, 144), help="the model's input size")
    parser.add_argument("--original-size", type=parse_size, default=None,
                        help="size the synthetic originals are rendered at (default: --image-size); TFRecords "
                             "keep originals, so the input pipeline resizes them per step")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="workers of the multi_threading and multi_processing modes (in_memory runs with 1)")
    parser.add_argument("--identities-per-batch", type=int, default=batch_defaults.num_identities,
                        help="P of the pipeline and of the training step (default: DataConfig's)")
    parser.add_argument("--instances", type=int, default=batch_defaults.num_instances,
                        help="K of the pipeline and of the training step (default: DataConfig's)")
    parser.add_argument("--batches", type=int, default=6, help="pipeline batches per timed repeat")
    parser.add_argument("--steps", type=int, default=1, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the pipeline and of the step")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    p, k = args.identities_per_batch, args.instances
    original_size = args.original_size or args.image_size
    results = {"image_size": list(args.image_size), "original_size": list(original_size),
               "identities_per_batch": p, "instances": k, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        root = sysu_ds.generate_synthetic(os.path.join(tmp, "raw"), identities=args.identities,
                                       image_size=original_size, images_per_camera=6, progress=True)
        results["images"] = replicate(root, args.copies)
        out = os.path.join(tmp, "tfrecords")
        results["preprocess"] = bench_preprocess(root, out, args.image_size, args.workers)
        print("preprocess:", json.dumps(results["preprocess"]))
        results["input_pipeline"] = bench_input_pipeline(out, args.image_size, p, k, args.batches, args.repeats)
        print("input pipeline:", json.dumps(results["input_pipeline"]))
    if not args.skip_step:
        results["train_step"] = bench_train_step(args.image_size, p, k, args.steps, args.repeats)
        print("KDEM train step:", json.dumps(results["train_step"]))
        # Same batch composition (P×K pairs, 2·P·K input images) on both sides.
        ratio = results["input_pipeline"]["input_images_per_second"] / results["train_step"]["input_images_per_second"]
        results["pipeline_over_step"] = round(ratio, 2)
        results["pipeline_over_step_verdict"] = target_verdict(
            ratio, 5.0, combined_spread(results["input_pipeline"]["batch"], results["train_step"]["step"]))
    pre = results["preprocess"]
    print(f"\npreprocessing: {pre['images_per_second']} images/s, {pre['mode']} with {pre['workers']} worker(s) "
          f"(target >= 200)")
    if "pipeline_over_step" in results:
        print(verdict_line(f"input pipeline / KDEM training step input images/s at P={p} x K={k}",
                           results["pipeline_over_step_verdict"]))
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
