"""The influence-factor collapse study: one table row per training run folder.

    python -m benchmarks.factor_collapse RUN_DIR [RUN_DIR ...] [--interior 0.05]

For each run (`kdem_tf.train` output) prints its switches (`loss.con_detach_factors`,
`model.factor_temperature`, the seed), mi_v's batch mean and std over the last epoch
(history.jsonl), the share of training pairs whose final mi_v lies inside (δ, 1 − δ)
(influence_factors.npy, δ = --interior), the first epoch whose mean mi_v leaves (δ, 1 − δ), and
the last evaluation's mAP and rank-1; then the mean and std of each group of runs with the same
switches. docs/training.md ("The influence-factor collapse, studied") has the figures.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import yaml


def run_row(run_dir: str, interior: float) -> dict:
    """The study's figures of one run folder."""
    with open(os.path.join(run_dir, "config.yaml")) as f:
        config = yaml.safe_load(f)
    with open(os.path.join(run_dir, "history.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    epochs = [record for record in history if "mi_v_mean" in record]
    if not epochs:
        raise SystemExit(f"{run_dir}/history.jsonl: no mi_v_mean (a run without KDEM?)")
    evaluations = [record for record in history if "eval" in record]
    factors_path = os.path.join(run_dir, "influence_factors.npy")
    factors = np.load(factors_path) if os.path.exists(factors_path) else None
    saturated = [r["epoch"] for r in epochs if not interior < r["mi_v_mean"] < 1.0 - interior]
    return {
        "run": os.path.basename(os.path.normpath(run_dir)),
        "detached": bool(config["loss"].get("con_detach_factors", False)),
        "temperature": float(config["model"].get("factor_temperature", 1.0)),
        "seed": int(config["seed"]),
        "mi_v_mean": epochs[-1]["mi_v_mean"], "mi_v_std": epochs[-1]["mi_v_std"],
        "interior_share": None if factors is None else float(np.mean((factors > interior) & (factors < 1 - interior))),
        "saturated_from_epoch": saturated[0] if saturated else None,
        "mAP": evaluations[-1]["eval"]["mAP"] if evaluations else None,
        "rank1": evaluations[-1]["eval"]["rank1"] if evaluations else None,
    }


def _cell(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _mean_std(rows: Sequence[dict], key: str, digits: int = 2) -> str:
    values = np.array([row[key] for row in rows if row[key] is not None], np.float64)
    return "—" if not values.size else f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def format_table(rows: Sequence[dict], interior: float) -> str:
    """Markdown: one row per run, then one mean ± std row per group of switches."""
    lines = [f"| run | L_con factors | T | seed | mi_v mean (std), last epoch | pairs interior ({interior:g}, "
             f"{1 - interior:g}) | mean mi_v leaves it at epoch | mAP | rank-1 |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['run']} | {'detached' if row['detached'] else 'attached'} | {row['temperature']:g} | "
                     f"{row['seed']} | {row['mi_v_mean']:.4f} ({row['mi_v_std']:.4f}) | "
                     f"{_cell(None if row['interior_share'] is None else 100 * row['interior_share'], 1)}% | "
                     f"{row['saturated_from_epoch'] or 'never'} | {_cell(row['mAP'])} | {_cell(row['rank1'])} |")
    groups: Dict[tuple, List[dict]] = {}
    for row in rows:
        groups.setdefault((row["detached"], row["temperature"]), []).append(row)
    lines += ["", "| L_con factors | T | runs | mi_v mean, last epoch | mAP mean ± std | rank-1 mean ± std |",
              "|---|---:|---:|---|---|---|"]
    for (detached, temperature), members in groups.items():
        lines.append(f"| {'detached' if detached else 'attached'} | {temperature:g} | {len(members)} | "
                     f"{_mean_std(members, 'mi_v_mean', 4)} | {_mean_std(members, 'mAP')} | "
                     f"{_mean_std(members, 'rank1')} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="training run folders")
    parser.add_argument("--interior", type=float, default=0.05, help="δ: mi_v in (δ, 1 − δ) counts as interior")
    args = parser.parse_args(argv)
    print(format_table([run_row(run, args.interior) for run in args.runs], args.interior))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
