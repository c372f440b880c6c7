"""Edge embedder: SavedModel float32 / bfloat16 vs TFLite float32 / float16 / int8 on this CPU.

    python -m benchmarks.bench_edge [--sizes 288x144,96x48] [--seconds 5] [--json OUT]
                                    [--demo-run RUN --data-root RAW --calibration TFRECORDS]

Per image size: a random-init KDEM model (or the demo run, at its own size) is exported as a
SavedModel (float32, and bfloat16 via the mixed_bfloat16 policy where the CPU has
avx512_bf16/AMX) and as the infrared TFLite model (float32, float16, int8 with the float head,
int8-full; the int8 ones calibrated on --calibration's train split, else on random-pixel
TFRecords written here). With --demo-run, the largest per-op errors of int8-full (TFLite's
quantisation debugger) are printed too. Each variant is
then measured in its own process: images/s at batch 1 and 8 (uint8 images already decoded,
the model only) and peak resident memory. File sizes are the .tflite / SavedModel folder.
With --demo-run and --data-root, every variant is evaluated (`kdem_tf.evaluate --model`,
SYSU all-search, 1 trial; the TFLite ones as full visible + infrared pairs).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def folder_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def write_run(work: str, image_size, precision: str = "float32", weights_from=None, source_run=None):
    """A run folder with a random-init (or given weights) KDEM inference model; returns (run_dir, model).

    source_run: a training run folder whose config.yaml gives the architecture (a trained run's
    weights only fit the architecture they were trained with)."""
    import keras
    import tensorflow as tf

    from kdem_tf.config import ModelConfig

    from kdem_tf.model.model import build_kdem_models
    keras.mixed_precision.set_global_policy(precision)
    try:
        if source_run and os.path.exists(os.path.join(source_run, "config.yaml")):
            from kdem_tf import config as config_lib
            from kdem_tf.architecture import ABLATION_ROWS
            from kdem_tf.training.models import build_models

            with open(os.path.join(source_run, "config.yaml")) as f:
                config = config_lib.from_yaml_text(f.read())
            with open(os.path.join(source_run, "run_info.json")) as f:
                classes = json.load(f)["num_classes"]
            _, model = build_models(config, classes, ABLATION_ROWS[config.loss.ablation], tf.distribute.get_strategy())
        else:
            _, model = build_kdem_models(ModelConfig(backbone_weights="none"), 4, tuple(image_size))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if weights_from is not None:
        model.set_weights(weights_from.get_weights())
    run_dir = os.path.join(work, f"run_{precision}_{image_size[0]}x{image_size[1]}")
    os.makedirs(run_dir, exist_ok=True)
    model.save(os.path.join(run_dir, "inference_model.keras"))
    with open(os.path.join(run_dir, "run_info.json"), "w") as f:
        json.dump({"image_size": list(image_size), "embedding_dim": 2048, "num_classes": 4}, f)
    return run_dir, model


def random_tfrecords(work: str, image_size, per_modality: int = 16) -> str:
    """Random-pixel JPEGs of both modalities as a train split (calibration without a dataset)."""
    import tensorflow as tf
    from PIL import Image

    from kdem_tf.data import schema
    root = os.path.join(work, "records")
    os.makedirs(os.path.join(root, "train"), exist_ok=True)
    rng = np.random.default_rng(0)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(root, "train", "train-00000.tfrecord.gz"), options) as writer:
        for modality in schema.MODALITIES:
            for i in range(per_modality):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (*image_size, 3), dtype=np.uint8)).save(buffer, "JPEG")
                writer.write(schema.make_example(image=buffer.getvalue(), person_id=1, label=0, camera=1,
                                                 modality=modality, split="train", path=f"{modality}/{i}.jpg",
                                                 height=image_size[0], width=image_size[1]).SerializeToString())
    return root


def export_variants(run_dir: str, work: str, calibration: str, bf16_run=None, both_modalities=False) -> dict:
    """{variant: path}: SavedModel(s) and TFLite folders of one run."""
    from kdem_tf.evaluation.tflite_embedder import QUANTIZATIONS
    from serving.export.saved_model import export_embedder
    from serving.export.tflite import export_run_tflite
    modalities = ("visible", "infrared") if both_modalities else ("infrared",)
    variants = {"saved_model_float32": export_embedder(run_dir, os.path.join(work, "sm_float32"))}
    if bf16_run:
        variants["saved_model_bfloat16"] = export_embedder(bf16_run, os.path.join(work, "sm_bfloat16"),
                                                           compute_dtype="bfloat16")
    for quantize in QUANTIZATIONS:
        name = "tflite_" + ("float32" if quantize == "none" else quantize)
        started = time.time()
        variants[name] = export_run_tflite(run_dir, os.path.join(work, name), quantize, calibration,
                                           calibration_per_modality=32, modalities=modalities)
        print(f"  converted {name} in {time.time() - started:.0f} s", flush=True)
    return variants


def measure(variant: str, path: str, image_size, batch: int, seconds: float) -> dict:
    """In this process: images/s of one variant at `batch` (infrared images) and peak RSS."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, *image_size, 3), dtype=np.uint8)
    if variant.startswith("tflite"):
        from kdem_tf.evaluation.tflite_embedder import TFLiteEmbedder
        embedder = TFLiteEmbedder(path)

        def call():
            embedder.embed_images(images, "infrared")
    else:
        from serving.export.embedder import Embedder
        embedder = Embedder(path)
        floats = images.astype(np.float32)

        def call():
            embedder.embed_images(floats, ["infrared"] * batch)
    call()  # warm-up (graph tracing, XNNPACK packing)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or count < 3:
        call()
        count += 1
    elapsed = time.perf_counter() - started
    return {"images_per_s": round(count * batch / elapsed, 2), "calls": count,
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: a child started by
    fork+exec inherits its parent's peak there, which would give every variant the parent's figure."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def measure_in_subprocess(variant: str, path: str, image_size, batch: int, seconds: float) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-m", "benchmarks.bench_edge", "--measure", variant, path,
                             f"{image_size[0]}x{image_size[1]}", str(batch), str(seconds)],
                            capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def evaluate_variant(path: str, data_root: str, work: str, name: str) -> dict:
    from kdem_tf import evaluate
    output = os.path.join(work, f"metrics_{name}.json")
    code = evaluate.main(["--dataset", "sysu", "--data-root", data_root, "--model", path, "--trials", "1",
                          "--output", output])
    if code != 0:
        return {"error": f"kdem_tf.evaluate exited {code}"}
    with open(output) as f:
        metrics = json.load(f)
    return {"mAP": round(metrics["mAP"], 2), "rank1": round(metrics["rank1"], 2)}


def bench_size(image_size, work: str, args) -> dict:
    from serving.export.run_folder import load_run
    bf16 = cpu_has_bf16()
    if args.demo_run:
        run_dir = args.demo_run
        model, _ = load_run(run_dir)
    else:
        run_dir, model = write_run(work, image_size)
    bf16_run = write_run(work, image_size, "mixed_bfloat16", weights_from=model,
                         source_run=args.demo_run)[0] if bf16 else None
    calibration = args.calibration or random_tfrecords(work, image_size)
    variants = export_variants(run_dir, work, calibration, bf16_run, both_modalities=bool(args.data_root))
    out = {"image_size": list(image_size), "bf16_cpu": bf16, "calibration": calibration, "variants": {}}
    for name, path in variants.items():
        file_path = os.path.join(path, "infrared.tflite") if name.startswith("tflite") else path
        entry = {"bytes": folder_bytes(file_path)}
        for batch in (1, 8):
            entry[f"batch_{batch}"] = measure_in_subprocess(name, path, image_size, batch, args.seconds)
        if args.data_root:
            entry["accuracy"] = evaluate_variant(path, args.data_root, work, name)
        out["variants"][name] = entry
        print(f"  {name}: {json.dumps(entry)}", flush=True)
    base = out["variants"]["saved_model_float32"]
    for entry in out["variants"].values():
        try:
            entry["speedup_batch_1"] = round(entry["batch_1"]["images_per_s"] / base["batch_1"]["images_per_s"], 2)
        except KeyError:
            pass
    tflite32 = out["variants"]["tflite_float32"]["bytes"]
    for name in ("tflite_float16", "tflite_int8", "tflite_int8-full"):
        out["variants"][name]["bytes_over_tflite_float32"] = round(out["variants"][name]["bytes"] / tflite32, 3)
    if args.demo_run:
        out["int8_full_worst_layers"] = worst_int8_layers(run_dir, calibration)
    return out


def worst_int8_layers(run_dir: str, calibration: str, count: int = 8) -> list:
    """The fully quantised infrared model's largest per-op errors (TFLite's quantisation debugger)."""
    from serving.export.run_folder import load_run
    from serving.export.tflite import (ModalityEmbedder, calibration_images, find_embedder_parts, int8_layer_errors,
                                       load_contract)
    model, run_info = load_run(run_dir)
    contract = load_contract(run_dir, run_info)
    embedder = ModalityEmbedder(find_embedder_parts(model, "infrared"), contract)
    rows = int8_layer_errors(embedder, calibration_images(calibration, contract, 32)["infrared"])[:count]
    print("  int8-full, largest per-op errors (RMSE in quantisation steps): " +
          ", ".join(f"{r['tensor'].split(';')[0]} ({r['op']}) {r['rmse_over_scale']:.2f}" for r in rows), flush=True)
    return rows


def format_table(results: list) -> str:
    lines = ["| size | variant | file MB | img/s b1 | img/s b8 | peak MB b1 | x SavedModel f32 b1 | mAP | rank-1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, e in r["variants"].items():
            acc = e.get("accuracy", {})
            lines.append(f"| {r['image_size'][0]}x{r['image_size'][1]} | {name} | {e['bytes'] / 1e6:.1f} | "
                         f"{e['batch_1'].get('images_per_s', '-')} | {e['batch_8'].get('images_per_s', '-')} | "
                         f"{e['batch_1'].get('peak_rss_mb', '-')} | {e.get('speedup_batch_1', '-')} | "
                         f"{acc.get('mAP', '-')} | {acc.get('rank1', '-')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--measure"]:  # child process: one variant, one batch size
        from kdem_tf.image_contract import parse_size
        variant, path, size, batch, seconds = argv[1:6]
        print(json.dumps(measure(variant, path, parse_size(size), int(batch), float(seconds))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="288x144,96x48", help="comma-separated HxW (ignored with --demo-run)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per variant and batch size")
    parser.add_argument("--demo-run", help="a trained run folder (its size replaces --sizes)")
    parser.add_argument("--data-root", help="with --demo-run: SYSU-layout raw data to evaluate every variant on")
    parser.add_argument("--calibration", help="TFRecords folder for int8 (default: random-pixel images)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    from benchmarks.common import machine_info
    from kdem_tf.image_contract import parse_size
    if args.demo_run:
        with open(os.path.join(args.demo_run, "run_info.json")) as f:
            sizes = [tuple(json.load(f)["image_size"])]
    else:
        sizes = [parse_size(s) for s in args.sizes.split(",")]
    report = {"machine": machine_info(), "load_average_start": os.getloadavg(), "argv": argv, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="kdem_edge_") as work:
        for size in sizes:
            print(f"== {size[0]}x{size[1]}", flush=True)
            folder = os.path.join(work, f"{size[0]}x{size[1]}")
            os.makedirs(folder)
            report["sizes"].append(bench_size(size, folder, args))
    report["load_average_end"] = os.getloadavg()
    print(format_table(report["sizes"]))
    print(f"machine: {report['machine']['cpu']}, {report['machine']['cores']} cores; load average "
          f"{report['load_average_start'][0]:.1f} at start, {report['load_average_end'][0]:.1f} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
