"""Data-layer speed: Beam preprocessing images/s and tf.data P×K pipeline images/s.

    python -m benchmarks.bench_data [--identities 60] [--copies 5] [--image-size 288x144]
        [--original-size 432x216] [--json OUT]

Targets (issue #2): preprocessing ≥ 200 images/s at 288x144 on a 2-core machine;
the input pipeline ≥ 5x the images/s a KDEM training step consumes at the same size
(the step rate is measured here too, on a small batch, unless --skip-step).
Prints figures only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from benchmarks.common import machine_info


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


def bench_preprocess(root: str, out: str, image_size, workers: int) -> dict:
    """Each local running mode on the same images; the default mode's figures at the top level."""
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
        modes[mode] = {"images": summary["images_written"], "wall_seconds": round(wall, 2),
                       "images_per_second": round(summary["images_written"] / wall, 1)}
        print(f"preprocess {mode}: {json.dumps(modes[mode])}", flush=True)
    default = preprocess.local_pipeline_options([]).get_all_options()["direct_running_mode"]
    return {**modes[default], "mode": default, "workers": workers, "modes": modes}


def bench_input_pipeline(tfrecords: str, image_size, batches: int = 30) -> dict:
    from kdem_tf.data import input_pipeline as ip

    split = ip.load_split(tfrecords, "train")
    dataset, _ = ip.train_dataset(split, image_size, num_identities=8, num_instances=4)
    iterator = iter(dataset)
    next(iterator)  # warm-up: graph tracing, first decode
    started = time.time()
    for _ in range(batches):
        next(iterator)
    seconds = time.time() - started
    images = batches * 8 * 4 * 2  # visible + infrared
    return {"batches": batches, "images_per_second": round(images / seconds, 1)}


def bench_train_step(image_size, steps: int = 3) -> dict:
    """Stream-images/s of the full KDEM step (P=4, K=2: 8 pairs, 24 stream-images)."""
    import numpy as np
    import tensorflow as tf
    from kdem_tf.model.model import build_kdem_models
    from kdem_tf.model.optim import build_optimizer
    from kdem_tf.model.trainer import KDEMTrainer

    train_model, _ = build_kdem_models(num_classes=16, image_size=image_size)
    setup = build_optimizer(steps_per_epoch=10)
    trainer = KDEMTrainer(train_model, backbone_lr_scale=setup.backbone_lr_scale, weight_decay=setup.weight_decay)
    trainer.compile(optimizer=setup.optimizer)
    step = tf.function(trainer.train_step)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 2).astype(np.int32)
    batch = ({"visible": rng.normal(size=(8, *image_size, 3)).astype("float32"),
              "infrared": rng.normal(size=(8, *image_size, 3)).astype("float32")},
             {"label_v": labels, "label_i": labels})
    step(batch)
    started = time.time()
    for _ in range(steps):
        step(batch)
    seconds = time.time() - started
    pairs = 8 * steps
    return {"pairs_per_second": round(pairs / seconds, 2), "input_images_per_second": round(2 * pairs / seconds, 2),
            "stream_images_per_second": round(3 * pairs / seconds, 2)}


def main() -> None:
    from kdem_tf.data import synthetic
    from kdem_tf.image_contract import parse_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=60)
    parser.add_argument("--copies", type=int, default=5, help="extra copies of each image (see replicate)")
    parser.add_argument("--image-size", type=parse_size, default=(288, 144), help="the model's input size")
    parser.add_argument("--original-size", type=parse_size, default=None,
                        help="size the synthetic originals are rendered at (default: --image-size); TFRecords "
                             "keep originals, so the input pipeline resizes them per step")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    original_size = args.original_size or args.image_size
    results = {"machine": machine_info(), "image_size": list(args.image_size), "original_size": list(original_size)}
    with tempfile.TemporaryDirectory() as tmp:
        root = synthetic.generate_sysu(os.path.join(tmp, "raw"), identities=args.identities,
                                       image_size=original_size, images_per_camera=6, progress=True)
        results["images"] = replicate(root, args.copies)
        out = os.path.join(tmp, "tfrecords")
        results["preprocess"] = bench_preprocess(root, out, args.image_size, args.workers)
        print("preprocess:", json.dumps(results["preprocess"]))
        results["input_pipeline"] = bench_input_pipeline(out, args.image_size)
        print("input pipeline:", json.dumps(results["input_pipeline"]))
    if not args.skip_step:
        results["train_step"] = bench_train_step(args.image_size)
        print("KDEM train step:", json.dumps(results["train_step"]))
        ratio = results["input_pipeline"]["images_per_second"] / results["train_step"]["input_images_per_second"]
        results["pipeline_over_step"] = round(ratio, 1)
    print(f"\npreprocessing: {results['preprocess']['images_per_second']} images/s (target >= 200)")
    if "pipeline_over_step" in results:
        print(f"input pipeline / training step: {results['pipeline_over_step']}x (target >= 5x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
