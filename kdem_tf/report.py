"""A one-page HTML report of a training run: curves, influence factors, CMC, montage, metrics.

    python -m kdem_tf.report --run RUN_DIR --metrics metrics.json [--montage PNG] --out REPORT_DIR

Everything is local files (PNG + one index.html), readable offline.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from kdem_tf.artifacts import CONFIG_FILE, HISTORY_FILE, INFLUENCE_FACTORS_FILE, RUN_INFO_FILE, atomic_write_text

# The paper's Table 2 (SYSU-MM01) rows, for orientation only.
PAPER_SYSU_ROWS = [
    ("AGW [23] (paper's Table 2)", "all", 47.50, 84.39, 62.14, 47.65, 35.30),
    ("KDEM (paper's Table 2)", "all", 58.09, 91.19, 96.63, 55.52, 40.69),
    ("KDEM (paper's Table 2)", "indoor", 62.18, 94.38, 98.64, 68.30, 64.11),
]
LOSS_KEYS = ("loss", "id_loss", "wrt_loss", "div_loss", "con_loss")
FACTOR_KEYS = ("mi_v_mean", "mi_v_std")


def read_history(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _figure(width: float = 6.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_losses(history: Sequence[dict], path: str) -> Optional[str]:
    """One panel per loss term (their scales differ by orders of magnitude)."""
    keys = [k for k in LOSS_KEYS if any(k in h for h in history)]
    if not keys:
        return None
    fig = _figure(3.0 * len(keys), 2.8)
    epochs = [h["epoch"] for h in history]
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", markersize=3)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_evaluation(history: Sequence[dict], path: str) -> Optional[str]:
    """Test rank-1 and mAP at each evaluated epoch; epoch 0 is the untrained model."""
    rows = [h for h in history if "eval" in h]
    if not rows:
        return None
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot(1, 1, 1)
    epochs = [h["epoch"] for h in rows]
    for key, label in (("mAP", "mAP"), ("rank1", "rank-1")):
        ax.plot(epochs, [h["eval"].get(key, np.nan) for h in rows], marker="o", markersize=4, label=label)
    if epochs[0] == 0:
        ax.annotate("untrained", (0, rows[0]["eval"].get("mAP", np.nan)), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.set_title("test split during training", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_factors(history: Sequence[dict], factors: Optional[np.ndarray], path: str) -> Optional[str]:
    """mi_v mean ± std per epoch, and the histogram of mi_v of the final model."""
    if not any("mi_v_mean" in h for h in history) and factors is None:
        return None
    fig = _figure(10.0, 3.4)
    ax = fig.add_subplot(1, 2, 1)
    epochs = np.array([h["epoch"] for h in history if "mi_v_mean" in h])
    if len(epochs):
        mean = np.array([h["mi_v_mean"] for h in history if "mi_v_mean" in h])
        std = np.array([h.get("mi_v_std", 0.0) for h in history if "mi_v_mean" in h])
        ax.plot(epochs, mean, marker="o", markersize=3, label="mean mi_v (batch)")
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.25, label="± std over the batch")
        ax.plot(epochs, 1 - mean, linestyle="--", label="mean mi_i = 1 - mi_v")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("epoch")
    ax.set_title("modality influence factors", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    ax = fig.add_subplot(1, 2, 2)
    if factors is not None and len(factors):
        ax.hist(factors, bins=np.linspace(0, 1, 21), color="C1", edgecolor="white")
        ax.set_title(f"mi_v of the final model ({len(factors)} training pairs)", fontsize=10)
    ax.set_xlabel("mi_v")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    fig.savefig(path)
    return path


METRIC_COLUMNS = ("rank1", "rank10", "rank20", "mAP", "mINP")


def variant_rows(metrics: Dict[str, float], label: str) -> List[tuple]:
    """(label, variant, sampling, flip, values) per variant of a metrics.json, plain first.

    A metrics.json of `kdem_tf.evaluate` lists its variants (plain, re-ranked, flip...) under
    "variants"; an older or hand-written one is one plain row.
    """
    variants = metrics.get("variants") or {"plain": dict(metrics, variant="plain")}
    rows = []
    for key, entry in variants.items():
        rows.append((label, entry.get("variant", key), entry.get("gallery_sampling", metrics.get("gallery_sampling", "")),
                     bool(entry.get("flip", False)), [entry.get(k, float("nan")) for k in METRIC_COLUMNS]))
    return rows


def metrics_table(metrics: Dict[str, float], label: str, mode: str = "all") -> str:
    """Our rows, one per variant, each labelled with variant, gallery sampling and flip; then the paper's."""
    head = ("<tr><th>method</th><th>variant</th><th>sampling</th><th>flip</th><th>mode</th><th>R1</th>"
            "<th>R10</th><th>R20</th><th>mAP</th><th>mINP</th></tr>")
    ours = "".join(
        f"<tr class='ours'><td>{html.escape(name)}</td><td>{html.escape(variant)}</td>"
        f"<td>{html.escape(str(sampling))}</td><td>{'yes' if flip else 'no'}</td><td>{mode}</td>"
        + "".join(f"<td>{v:.2f}</td>" for v in values) + "</tr>"
        for name, variant, sampling, flip, values in variant_rows(metrics, label))
    paper = "".join(f"<tr class='paper'><td>{n}</td><td>plain</td><td>agw</td><td>no</td><td>{m}</td>"
                    + "".join(f"<td>{v:.2f}</td>" for v in vals) + "</tr>" for n, m, *vals in PAPER_SYSU_ROWS)
    return f"<table>{head}{ours}{paper}</table>"


def interpretation_sections(out_dir: str, metrics: dict) -> List[str]:
    """HTML of the same-person threshold (kdem_tf.evaluate --plots writes match_threshold.png) and of the
    activation maps (kdem_tf.visualize writes activation_maps.png), for those present in out_dir."""
    from kdem_tf.evaluation.match_threshold import METRICS_KEY
    from kdem_tf.activation_maps import FIGURE_FILE

    body = []
    threshold = metrics.get(METRICS_KEY)
    if threshold and os.path.exists(os.path.join(out_dir, "match_threshold.png")):
        points = "; ".join(f"at FMR {p['fmr']:g} the threshold is {p['threshold']:.3f} with TMR {100 * p['tmr']:.1f}%"
                           for p in threshold["operating_points"])
        body += ["<h2>Same-person threshold</h2>",
                 f"<p>{html.escape(threshold['rule'])} ({html.escape(threshold['score'])}), calibrated on "
                 f"{threshold['genuine']['count']} same-identity and {threshold['impostor']['count']} "
                 f"different-identity query-gallery pairs of the protocol: {html.escape(points)}. "
                 f"<code>python -m serving.export --match-threshold-from metrics.json --fmr 1e-3</code> records "
                 f"it in the export's kdem_info.json.</p>", "<img src='match_threshold.png' alt='threshold'>"]
    if os.path.exists(os.path.join(out_dir, FIGURE_FILE)):
        body += ["<h2>Where the network looks (the paper's Fig. 3)</h2>",
                 "<p>Per infrared query: the image, its activation map (Σ<sub>c</sub> A<sub>c</sub>², torchreid), "
                 "its class activation map (the training class the classifier ranks first, BN-neck folded in), "
                 "then for each top visible match its activation map (green: same person) and the similarity "
                 "map of the pair on the query (Grad-CAM of the cosine similarity). Definitions: "
                 "docs/evaluation.md.</p>", f"<img src='{FIGURE_FILE}' alt='activation maps'>"]
    return body


def write_report(out_dir: str, run_dir: str, metrics: Dict[str, float], montage: Optional[str] = None,
                 cmc_png: Optional[str] = None, title: str = "kdem-tf demo report",
                 notes: Sequence[str] = (), extra_settings: Optional[dict] = None) -> str:
    """Writes out_dir/index.html with its PNGs; returns the HTML path."""
    os.makedirs(out_dir, exist_ok=True)
    history = read_history(run_dir)
    factors_path = os.path.join(run_dir, INFLUENCE_FACTORS_FILE)
    factors = np.load(factors_path) if os.path.exists(factors_path) else None
    figures = []
    losses = plot_losses(history, os.path.join(out_dir, "losses.png"))
    if losses:
        figures.append(("Training losses (per-epoch running means)", "losses.png"))
    if plot_evaluation(history, os.path.join(out_dir, "evaluation.png")):
        figures.append(("Test metrics during training (epoch 0: the untrained model)", "evaluation.png"))
    factor_png = plot_factors(history, factors, os.path.join(out_dir, "influence_factors.png"))
    if factor_png:
        figures.append(("Modality influence factors", "influence_factors.png"))
    if cmc_png is None and metrics.get("cmc"):
        from kdem_tf.evaluation.plots import plot_cmc
        cmc_png = plot_cmc([v * 100 for v in metrics["cmc"]], os.path.join(out_dir, "cmc.png"), "CMC (SYSU all-search)")
    for caption, src in (("CMC curve", cmc_png), ("Retrieval montage: infrared queries (blue) and their top-10 "
                                                  "visible gallery images, correct green, wrong red", montage)):
        if src and os.path.exists(src):
            if os.path.abspath(os.path.dirname(src)) != os.path.abspath(out_dir):
                shutil.copy(src, os.path.join(out_dir, os.path.basename(src)))
            figures.append((caption, os.path.basename(src)))
    settings = {}
    for name in (CONFIG_FILE, RUN_INFO_FILE):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                settings[name] = f.read()
    if extra_settings:
        settings["demo"] = json.dumps(extra_settings, indent=2)
    body = [f"<h1>{html.escape(title)}</h1>",
            "<p class='warn'>Synthetic data: these numbers are not comparable with the paper's, which are on "
            "the real SYSU-MM01. The paper's rows are shown for orientation only.</p>",
            "<h2>Metrics (percent)</h2>", metrics_table(metrics, "this run (synthetic)")]
    body += [f"<p>{html.escape(n)}</p>" for n in notes]
    for caption, src in figures:
        body.append(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(src)}' alt='{html.escape(caption)}'>")
    body += interpretation_sections(out_dir, metrics)
    body.append("<h2>Run settings</h2>")
    body += [f"<h3>{html.escape(k)}</h3><pre>{html.escape(v)}</pre>" for k, v in settings.items()]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}img{max-width:100%;"
             "border:1px solid #ddd}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child{text-align:left}tr.ours{background:#eef6ff;font-weight:bold}"
             "tr.paper{color:#666}.warn{background:#fff4d6;padding:6px}pre{background:#f6f6f6;padding:6px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    path = os.path.join(out_dir, "index.html")
    atomic_write_text(path, page)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="training run folder (history.jsonl, config.yaml...)")
    parser.add_argument("--metrics", required=True, help="metrics.json (rank1..mINP in percent, optional cmc)")
    parser.add_argument("--montage")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    with open(args.metrics) as f:
        metrics = json.load(f)
    print(write_report(args.out, args.run, metrics.get("current", metrics), args.montage))
    return 0


if __name__ == "__main__":
    sys.exit(main())
