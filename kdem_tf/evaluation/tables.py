"""The printed tables and metrics.json entries of an evaluation, and the ranked lists a montage shows."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from kdem_tf.evaluation import reranking
from kdem_tf.evaluation.metrics import Protocol, distance_chunks, ranking_rule
from kdem_tf.evaluation.results import TrialResult, average_trials, summary

COLUMNS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
HEADINGS = ("Rank-1", "Rank-5", "Rank-10", "Rank-20", "mAP", "mINP")


def format_table(title: str, rows: List[Tuple[str, dict]]) -> str:
    """The paper-style table: one row per trial and the mean, values in percent."""
    head = f"{'Trial':<7}" + "".join(f"{n:>9}" for n in HEADINGS)
    lines = [title, "-" * len(head), head, "-" * len(head)]
    for i, (name, m) in enumerate(rows):
        if i == len(rows) - 1 and i > 0:  # the mean below the trials (a lone mean row needs none)
            lines.append("-" * len(head))
        lines.append(f"{name:<7}" + "".join(f"{m[c]:>9.2f}" for c in COLUMNS))
    return "\n".join(lines)


def format_variants(title: str, means: Dict[str, dict]) -> str:
    """One mean row per variant (plain, re-ranked, ...), each labelled with its gallery sampling and
    flip setting (kdem_tf.evaluation.variants), values in percent."""
    width = max(len("Variant"), *(len(label) for label in means)) + 2
    head = f"{'Variant':<{width}}" + "".join(f"{n:>9}" for n in HEADINGS) + f"  {'Sampling':<10}Flip"
    lines = [title, "-" * len(head), head, "-" * len(head)]
    lines += [f"{label:<{width}}" + "".join(f"{m[c]:>9.2f}" for c in COLUMNS)
              + f"  {m.get('gallery_sampling', ''):<10}{'yes' if m.get('flip') else 'no'}"
              for label, m in means.items()]
    return "\n".join(lines)


def rerank_settings(rerank: Optional[reranking.RerankParams]) -> Optional[dict]:
    """{"k1", "k2", "lambda"} of a re-ranking, None without one."""
    return None if rerank is None else {"k1": rerank.k1, "k2": rerank.k2, "lambda": rerank.lambda_value}


def per_trial_rows(results: List[TrialResult]) -> List[dict]:
    """One metrics dict per trial (percent), with its query and gallery counts."""
    return [dict(trial=r.trial, query_count=r.num_query, gallery_size=r.num_gallery,
                 **summary(r.cmc, r.mAP, r.mINP)) for r in results]


def variant_metrics(label: str, results: List[TrialResult],
                    rerank: Optional[reranking.RerankParams]) -> dict:
    """The metrics.json entry of one variant: its label and re-ranking parameters (None when plain),
    mean, cmc and per-trial numbers (percent)."""
    cmc, mAP, mINP = average_trials(results)
    return dict(variant=label, rerank=rerank_settings(rerank), **summary(cmc, mAP, mINP),
                cmc=[float(v) * 100.0 for v in cmc], per_trial=per_trial_rows(results))


def ranked_gallery(q_feats, g_feats, q_camids, g_camids, protocol: Protocol, distance: str = "cosine",
                   k: int = 10, q_pids=None, g_pids=None) -> List[np.ndarray]:
    """Top-k gallery indices per query, as the metric ranks them (the protocol's ranking rule:
    excluded cameras, same id and camera dropped)."""
    rule = ranking_rule(protocol)
    g_pids = np.zeros(len(g_feats), np.int64) if g_pids is None else np.asarray(g_pids)
    q_pids = np.zeros(len(q_feats), np.int64) if q_pids is None else np.asarray(q_pids)
    out = []
    for start, dist in distance_chunks(q_feats, g_feats, distance):
        for row, order in enumerate(np.argsort(dist, axis=1)):
            out.append(rule.kept(order, q_pids[start + row], q_camids[start + row], g_pids, g_camids)[:k])
    return out
