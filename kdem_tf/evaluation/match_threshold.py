"""A calibrated same-person threshold from a protocol's query–gallery pairs.

Ranking metrics (CMC, mAP) say how well a gallery is ordered, not where to cut it. A deployment that
must answer "is this the same person?" needs a score threshold and the error rates it gives. This
module collects, over every query–gallery pair a protocol scores (the pairs its ranking keeps: SYSU
drops cam2 for cam3 queries, LLCM and manifests drop a query's own id in its own camera; pooled over
all trials), the scores of same-identity pairs (genuine) and of different-identity pairs (impostor),
and reports

- both score distributions (count, mean, std, quantiles, a histogram on [-1, 1]);
- for each target false-match rate (FMR, the fraction of impostor pairs accepted) the smallest
  threshold whose FMR is at most the target, the FMR it achieves and the true-match rate (TMR, the
  fraction of genuine pairs accepted) there;
- the TMR-against-FMR curve (a ROC curve), thinned to at most `CURVE_POINTS` points.

The score is the cosine similarity of the embeddings, whatever `--distance` ranks with: the
exported SavedModel's embeddings are L2-normalised and the server scores by dot product, so a
threshold from here applies to the server's `score` as is. The decision rule: same person iff
score >= threshold. Pure NumPy; `kdem_tf.evaluate` calls it and `serving.export
--match-threshold-from` reads its result back (`threshold_record`).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from kdem_tf.evaluation.metrics import Protocol, ranking_rule
from kdem_tf.evaluation.trials import EvaluationError

FMR_TARGETS = (1e-2, 1e-3)
CURVE_POINTS = 400
HISTOGRAM_BINS = 40
METRICS_KEY = "match_threshold"
SCORE_NAME = "cosine similarity of the L2-normalised embeddings (the server's dot-product score)"
RULE = "same person iff score >= threshold"


class ThresholdError(EvaluationError):
    """Bad input to the threshold computation or a metrics file without what is asked; names it."""


def cosine_similarity(q_feats, g_feats) -> np.ndarray:
    """[Q, D], [G, D] -> [Q, G] cosine similarities (float64)."""
    q = np.asarray(q_feats, np.float64)
    g = np.asarray(g_feats, np.float64)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ThresholdError(f"features must be [Q, D] and [G, D] with the same D, got {q.shape} and {g.shape}")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return q @ g.T


def pair_scores(q_feats, g_feats, q_pids, q_cams, g_pids, g_cams, protocol: Protocol) -> Tuple[np.ndarray, np.ndarray]:
    """(genuine [n], impostor [m]) float32 cosine scores of the protocol's pairs of one trial."""
    scores = cosine_similarity(q_feats, g_feats)
    if scores.shape != (len(q_pids), len(g_pids)):
        raise ThresholdError(f"{scores.shape[0]} query and {scores.shape[1]} gallery feature rows for "
                             f"{len(q_pids)} query and {len(g_pids)} gallery labels")
    kept = ranking_rule(protocol).pair_mask(q_pids, q_cams, g_pids, g_cams)
    same = np.asarray(q_pids).reshape(-1, 1) == np.asarray(g_pids).reshape(1, -1)
    return scores[kept & same].astype(np.float32), scores[kept & ~same].astype(np.float32)


def threshold_at_fmr(genuine, impostor, fmr: float) -> dict:
    """The smallest threshold t with FMR(t) = mean(impostor >= t) <= fmr, and the TMR there.

    With m impostor scores at most k = floor(fmr * m) of them may be accepted, so t lies just above
    the (k+1)-th largest impostor score (the next float up: ties with it are rejected too).

    Returns:
        {"fmr": target, "threshold", "achieved_fmr", "tmr", "impostor_pairs", "genuine_pairs"}.
    """
    genuine = np.asarray(genuine, np.float64).reshape(-1)
    impostor = np.asarray(impostor, np.float64).reshape(-1)
    if not 0.0 < fmr < 1.0:
        raise ThresholdError(f"the false-match rate must be in (0, 1), got {fmr}")
    if impostor.size == 0 or genuine.size == 0:
        raise ThresholdError(f"need genuine and impostor pairs, got {genuine.size} and {impostor.size}")
    allowed = int(np.floor(fmr * impostor.size))
    if allowed >= impostor.size:
        threshold = float(impostor.min())
    else:
        cut = np.partition(impostor, impostor.size - 1 - allowed)[impostor.size - 1 - allowed]
        threshold = float(np.nextafter(np.float32(cut), np.float32(np.inf)))  # a float32 the server's scores can meet
    return {"fmr": float(fmr), "threshold": threshold, "achieved_fmr": float(np.mean(impostor >= threshold)),
            "tmr": float(np.mean(genuine >= threshold)), "impostor_pairs": int(impostor.size),
            "genuine_pairs": int(genuine.size)}


def roc_curve(genuine, impostor, points: int = CURVE_POINTS) -> Dict[str, list]:
    """(FMR, TMR) at every distinct score taken as the threshold, thinned to about `points` points
    spaced evenly in log FMR (the ends kept); FMR descending, so the curve runs from (1, 1)."""
    genuine = np.sort(np.asarray(genuine, np.float64).reshape(-1))
    impostor = np.sort(np.asarray(impostor, np.float64).reshape(-1))
    thresholds = np.unique(np.concatenate([genuine, impostor]))
    fmr = 1.0 - np.searchsorted(impostor, thresholds, side="left") / impostor.size
    tmr = 1.0 - np.searchsorted(genuine, thresholds, side="left") / genuine.size
    if len(thresholds) > points:
        floor = max(1.0 / impostor.size, 1e-12)
        targets = np.logspace(0.0, np.log10(floor), points)
        picks = np.unique(np.concatenate([[0, len(thresholds) - 1],
                                          np.searchsorted(-fmr, -targets, side="left").clip(0, len(fmr) - 1)]))
        thresholds, fmr, tmr = thresholds[picks], fmr[picks], tmr[picks]
    return {"threshold": thresholds.tolist(), "fmr": fmr.tolist(), "tmr": tmr.tolist()}


def distribution(scores) -> dict:
    """Count, mean, std, quantiles and a HISTOGRAM_BINS-bin histogram on [-1, 1] of one score set."""
    scores = np.asarray(scores, np.float64)
    counts, edges = np.histogram(np.clip(scores, -1.0, 1.0), bins=HISTOGRAM_BINS, range=(-1.0, 1.0))
    quantiles = (0.001, 0.01, 0.05, 0.5, 0.95, 0.99, 0.999)
    return {"count": int(scores.size), "mean": float(scores.mean()), "std": float(scores.std()),
            "quantiles": {str(q): float(v) for q, v in zip(quantiles, np.quantile(scores, quantiles))},
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def threshold_report(genuine, impostor, fmrs: Sequence[float] = FMR_TARGETS,
                     protocol: Optional[dict] = None) -> dict:
    """The metrics.json entry: score and rule, both distributions, one operating point per FMR, the
    curve, and the protocol the pairs came from."""
    points = [threshold_at_fmr(genuine, impostor, fmr) for fmr in fmrs]
    for point in points:  # a target below 1/m cannot be resolved by m impostor pairs
        point["resolved"] = point["fmr"] * point["impostor_pairs"] >= 1.0
    return {"score": SCORE_NAME, "rule": RULE, "pairs": "the protocol's query-gallery pairs, pooled over trials",
            "protocol": dict(protocol or {}), "genuine": distribution(genuine), "impostor": distribution(impostor),
            "operating_points": points, "curve": roc_curve(genuine, impostor)}


class PairScoreCollector:
    """Wraps a `features_for(trial)` provider and keeps each trial's genuine/impostor scores (a trial
    asked for twice, e.g. again for the plots, is kept once)."""

    def __init__(self, protocol: Protocol):
        self.protocol = protocol
        self.by_trial: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def wrap(self, features_for: Callable) -> Callable:
        def recording(trial):
            q_feats, g_feats = features_for(trial)
            self.by_trial[trial.trial] = pair_scores(q_feats, g_feats, trial.query.pids, trial.query.cams,
                                                     trial.gallery.pids, trial.gallery.cams, self.protocol)
            return q_feats, g_feats
        return recording

    def scores(self) -> Tuple[np.ndarray, np.ndarray]:
        """(genuine, impostor) pooled over the trials seen."""
        if not self.by_trial:
            raise ThresholdError("no trial was scored")
        trials = sorted(self.by_trial)
        return (np.concatenate([self.by_trial[t][0] for t in trials]),
                np.concatenate([self.by_trial[t][1] for t in trials]))


def format_report(report: dict) -> str:
    """One console line per operating point."""
    lines = [f"same-person threshold ({report['rule']}; {report['genuine']['count']} genuine / "
             f"{report['impostor']['count']} impostor pairs):"]
    for point in report["operating_points"]:
        note = "" if point["resolved"] else " (too few impostor pairs to resolve this FMR)"
        lines.append(f"  FMR {point['fmr']:g}: threshold {point['threshold']:.4f}, TMR {100 * point['tmr']:.2f}%, "
                     f"achieved FMR {point['achieved_fmr']:.2e}{note}")
    return "\n".join(lines)


def threshold_record(metrics_path: str, fmr: float = 1e-3) -> dict:
    """What `serving.export --match-threshold-from` records in kdem_info.json: the threshold of a
    metrics.json (written by `kdem_tf.evaluate`) at `fmr`, with its provenance."""
    try:
        with open(metrics_path, "rb") as f:
            raw = f.read()
        metrics = json.loads(raw)
    except FileNotFoundError:
        raise ThresholdError(f"{metrics_path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ThresholdError(f"{metrics_path}: not JSON ({error})") from None
    report = metrics.get(METRICS_KEY) if isinstance(metrics, dict) else None
    if not isinstance(report, dict) or not isinstance(report.get("operating_points"), list):
        raise ThresholdError(f"{metrics_path}: no '{METRICS_KEY}.operating_points' (written by kdem_tf.evaluate "
                             f"from this version on: re-run the evaluation)")
    matches = [p for p in report["operating_points"] if np.isclose(p.get("fmr", -1.0), fmr, rtol=1e-6, atol=0.0)]
    if not matches:
        have = [p.get("fmr") for p in report["operating_points"]]
        raise ThresholdError(f"{metrics_path}: '{METRICS_KEY}.operating_points' has no fmr {fmr:g} (has {have})")
    point = matches[0]
    return {"threshold": point["threshold"], "fmr": point["fmr"], "tmr": point["tmr"],
            "achieved_fmr": point["achieved_fmr"], "resolved": point.get("resolved", True),
            "score": report.get("score", SCORE_NAME), "rule": report.get("rule", RULE),
            "source": {"file": os.path.abspath(metrics_path), "sha256": hashlib.sha256(raw).hexdigest(),
                       "protocol": report.get("protocol", {}), "model": metrics.get("source"),
                       "genuine_pairs": point.get("genuine_pairs"), "impostor_pairs": point.get("impostor_pairs")}}


def plot_threshold(report: dict, path: str, title: str = "same-person threshold") -> str:
    """Writes the two score histograms and the ROC curve with the operating points to `path` (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    hist_ax, roc_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, color in (("genuine", "C2"), ("impostor", "C3")):
        hist = report[name]["histogram"]
        edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"], np.float64)
        density = counts / max(counts.sum(), 1.0)
        hist_ax.stairs(density, edges, color=color, fill=True, alpha=0.4,
                       label=f"{name} ({report[name]['count']} pairs)")
    for point, style in zip(report["operating_points"], ("--", ":", "-.")):
        hist_ax.axvline(point["threshold"], color="k", linestyle=style, linewidth=1,
                        label=f"FMR {point['fmr']:g}: t = {point['threshold']:.3f}")
    hist_ax.set_xlabel("cosine similarity")
    hist_ax.set_ylabel("fraction of pairs")
    hist_ax.legend(fontsize=8)
    curve = report["curve"]
    fmr = np.maximum(np.asarray(curve["fmr"]), 1e-7)
    roc_ax.plot(fmr, 100.0 * np.asarray(curve["tmr"]), color="C0")
    for point in report["operating_points"]:
        roc_ax.plot(point["fmr"], 100.0 * point["tmr"], "ko", markersize=4)
        roc_ax.annotate(f"TMR {100 * point['tmr']:.1f}% @ FMR {point['fmr']:g}", (point["fmr"], 100.0 * point["tmr"]),
                        textcoords="offset points", xytext=(5, -12), fontsize=8)
    roc_ax.set_xscale("log")
    roc_ax.set_xlim(max(1.0 / max(report["impostor"]["count"], 1), 1e-6) / 2, 1.0)
    roc_ax.set_ylim(0.0, 100.5)
    roc_ax.set_xlabel("false-match rate")
    roc_ax.set_ylabel("true-match rate (%)")
    roc_ax.grid(True, alpha=0.3)
    from kdem_tf.evaluation.plots import save_figure

    return save_figure(fig, path, title, 10)
