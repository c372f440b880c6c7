"""The demo preset end to end: does it learn the synthetic set, and does bfloat16 train like float32?

    python -m benchmarks.bench_demo [--identities 100]
                                    [--runs float32:0,mixed_bfloat16:0,float32:1,mixed_bfloat16:1]
                                    [--work DIR] [--plot curves.png] [--json FILE] [--set KEY=VALUE ...]

About 20 minutes on a 2-core CPU (four runs of about 5).

1. generates a synthetic SYSU-MM01-layout set (`--identities`, 3 images per camera, rendered at
   the preset's image size, as `make demo` does) and its TFRecords under `--work` (reused);
2. trains the `demo` preset once per `precision:seed` in `--runs`, each in its own process
   (`python -m kdem_tf.train`, mixed precision is process-global);
3. prints, per run, the untrained model's mAP (history epoch 0), the trained mAP, their ratio and
   the wall time; and the loss-curve gaps (the largest per-epoch difference of the total loss):
   the precision gap float32 vs mixed_bfloat16 at the first seed, beside the noise floor measured
   both ways, float32 seed vs seed and mixed_bfloat16 seed vs seed (the first two seeds of `--runs`).
   The verdict is "bf16 changes training beyond seed noise" only when the precision gap exceeds
   both seed gaps, "within seed noise" otherwise; without all four runs, "not judged".

The issue's targets: trained mAP >= 50 and >= 3x untrained; bfloat16's curve within the noise of
float32's. `--plot` draws the total and ID loss curves of every run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import write_json
from kdem_tf.datasets import sysu as sysu_ds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare_data(work: str, identities: int, image_size) -> str:
    """The synthetic set rendered at the training size (as `make demo` does) and written as it is."""
    from kdem_tf.data import preprocess

    size = "x".join(str(v) for v in image_size)
    raw = os.path.join(work, f"sysu{identities}-{size}")
    out = os.path.join(work, f"tfrecords{identities}-{size}")
    if not os.path.exists(os.path.join(out, "_SUCCESS")):
        if not os.path.isdir(raw):
            sysu_ds.generate_synthetic(raw, identities=identities, images_per_camera=3, image_size=image_size, seed=0)
        preprocess.run_preprocess(preprocess.plan_splits("sysu", raw), raw, out,
                                  pipeline_options=preprocess.local_pipeline_options(
                                      ["--runner=DirectRunner", "--direct_running_mode=in_memory"]),
                                  overwrite=True)
    return out


def train_run(data: str, run_dir: str, precision: str, seed: int, overrides) -> dict:
    """Trains one demo run (or reuses a finished one) and returns its history summary."""
    history_path = os.path.join(run_dir, "history.jsonl")
    seconds = None
    if not os.path.exists(os.path.join(run_dir, "inference_model.keras")):
        cmd = [sys.executable, "-m", "kdem_tf.train", "--dataset", "sysu", "--data", data, "--out", run_dir,
               "--preset", "demo", "--mixed-precision", precision, "--set", f"seed={seed}", "--quiet"]
        for item in overrides:
            cmd += ["--set", item]
        started = time.time()
        done = subprocess.run(cmd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), cwd=REPO,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        seconds = time.time() - started
    with open(history_path) as f:
        history = [json.loads(line) for line in f if line.strip()]
    evals = [h for h in history if "eval" in h]
    if not evals or evals[0]["epoch"] != 0:
        raise RuntimeError(f"{history_path}: no epoch-0 (untrained) evaluation; is eval_every 0?")
    epochs = [h for h in history if "loss" in h]
    return {
        "precision": precision, "seed": seed, "run_dir": run_dir, "wall_seconds": seconds,
        "train_seconds": round(sum(h["seconds"] for h in epochs), 1),
        "untrained_map": evals[0]["eval"]["mAP"], "trained_map": evals[-1]["eval"]["mAP"],
        "trained_rank1": evals[-1]["eval"]["rank1"], "trained_minp": evals[-1]["eval"].get("mINP"),
        "map_by_epoch": {h["epoch"]: round(h["eval"]["mAP"], 2) for h in evals},
        "loss": [h["loss"] for h in epochs], "id_loss": [h["id_loss"] for h in epochs],
    }


def max_gap(a, b) -> float:
    n = min(len(a), len(b))
    return float(np.max(np.abs(np.asarray(a[:n]) - np.asarray(b[:n]))))


PRECISIONS = ("float32", "mixed_bfloat16")
BEYOND_NOISE = "bf16 changes training beyond seed noise"
WITHIN_NOISE = "within seed noise"
NOT_JUDGED = "not judged (needs float32 and mixed_bfloat16 at two seeds each)"


def precision_gaps(runs) -> dict:
    """The precision gap (float32 vs mixed_bfloat16, first seed) beside the two seed gaps (each
    precision, first vs second seed), and the verdict: beyond seed noise only above both."""
    by = {(r["precision"], r["seed"]): r for r in runs}
    seeds = list(dict.fromkeys(r["seed"] for r in runs))[:2]
    pairs = {"precision": [(p, seeds[0]) for p in PRECISIONS]}
    if len(seeds) == 2:
        pairs.update({f"{p}_seed": [(p, s) for s in seeds] for p in PRECISIONS})
    gaps = {}
    for name, (a, b) in pairs.items():
        if a in by and b in by:
            gaps[name] = {"runs": [f"{a[0]}:{a[1]}", f"{b[0]}:{b[1]}"],
                          "gap": round(max_gap(by[a]["loss"], by[b]["loss"]), 4)}
    if len(gaps) < 3:
        verdict = NOT_JUDGED
    else:
        beyond = all(gaps["precision"]["gap"] > gaps[f"{p}_seed"]["gap"] for p in PRECISIONS)
        verdict = BEYOND_NOISE if beyond else WITHIN_NOISE
    return {"gaps": gaps, "verdict": verdict}


def gap_line(judged: dict) -> str:
    names = {"precision": "precision", "float32_seed": "float32 seeds", "mixed_bfloat16_seed": "bf16 seeds"}
    parts = [f"{names[k]} {' vs '.join(v['runs'])}: {v['gap']}" for k, v in judged["gaps"].items()]
    return "largest per-epoch total-loss gaps: " + "; ".join(parts) + f" -> {judged['verdict']}"


def plot_curves(runs, path: str) -> None:
    from kdem_tf.report import _figure

    fig = _figure(10.0, 3.4)
    for i, key in enumerate(("loss", "id_loss")):
        ax = fig.add_subplot(1, 2, i + 1)
        for run in runs:
            ax.plot(range(1, len(run[key]) + 1), run[key], label=f"{run['precision']} seed {run['seed']}")
        ax.set_title(f"demo preset: {key}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=100)
    parser.add_argument("--runs", default="float32:0,mixed_bfloat16:0,float32:1,mixed_bfloat16:1",
                        help="comma-separated precision:seed; the first is the reference of loss_gap_vs_first")
    parser.add_argument("--work", help="keep data and runs here (finished runs are reused); default: a "
                                           "temporary folder, removed at the end")
    parser.add_argument("--set", action="append", default=[], help="config override for every run")
    parser.add_argument("--plot")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.work is None:
        with tempfile.TemporaryDirectory(prefix="kdem_bench_demo_") as work:
            return run(args, work)
    os.makedirs(args.work, exist_ok=True)
    return run(args, args.work)


def run(args, work: str) -> None:
    from kdem_tf import config as config_lib

    image_size = config_lib.load_config("demo", overrides=args.set).data.image_size
    data = prepare_data(work, args.identities, image_size)
    runs = []
    for item in args.runs.split(","):
        precision, seed = item.split(":")
        run_dir = os.path.join(work, "runs", f"{precision}-seed{seed}" + ("-" + "-".join(args.set) if args.set else ""))
        print(f"training {precision} seed {seed} → {run_dir}", flush=True)
        runs.append(train_run(data, run_dir, precision, int(seed), args.set))
        r = runs[-1]
        print(f"  untrained mAP {r['untrained_map']:.2f} → trained mAP {r['trained_map']:.2f} "
              f"({r['trained_map'] / max(r['untrained_map'], 1e-9):.2f}x), rank-1 {r['trained_rank1']:.2f}, "
              f"{r['train_seconds']:.0f} s of training steps", flush=True)
    reference = runs[0]
    judged = precision_gaps(runs)
    summary = {"identities": args.identities, "image_size": list(image_size), "overrides": args.set, "runs": runs,
               "loss_gap_vs_first": {f"{r['precision']}:{r['seed']}": round(max_gap(reference["loss"], r["loss"]), 4)
                                     for r in runs[1:]},
               "loss_gaps": judged["gaps"], "bf16_verdict": judged["verdict"]}
    print(gap_line(judged))
    if args.plot:
        plot_curves(runs, args.plot)
        print(f"curves: {args.plot}")
    if args.json:
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
