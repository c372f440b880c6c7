"""Running a protocol's trials: per-trial metrics, re-ranked variants, their mean as AGW averages it."""
from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from kdem_tf.evaluation import reranking
from kdem_tf.evaluation.metrics import RANKS, Protocol, check_features, evaluate_features, evaluate_rank
from kdem_tf.evaluation.trials import EvaluationError, Trial
from kdem_tf.evaluation.variants import PLAIN  # the variant label of results without re-ranking or flip


@dataclasses.dataclass
class TrialResult:
    """Metrics of one trial: cmc [max_rank] float32, mAP and mINP as fractions."""
    trial: int
    cmc: np.ndarray
    mAP: float
    mINP: float
    num_query: int
    num_gallery: int
    variant: str = PLAIN  # "plain", or the label of a re-ranking (RerankParams.label)


FeatureFn = Callable[[Trial], Tuple[np.ndarray, np.ndarray]]


def run_trials(trials: Sequence[Trial], features_for: FeatureFn, protocol: Protocol,
               distance: str = "cosine", max_rank: int = 20,
               rerank: Optional[reranking.RerankParams] = None) -> List[TrialResult]:
    """Evaluates each trial; `features_for(trial)` returns ([Q, D] query, [G, D] gallery) features.

    rerank: also score each trial after k-reciprocal re-ranking (Euclidean distances between the
    L2-normalised features, whatever `distance` is), before the protocol's camera rules; those
    results follow the plain ones, labelled `rerank.label` (see `group_variants`).
    """
    results, reranked = [], []
    reranker = reranking.TrialReranker(rerank) if rerank is not None else None
    for trial in trials:
        q_feats, g_feats = features_for(trial)
        cmc, mAP, mINP = evaluate_features(q_feats, g_feats, trial.query.pids, trial.gallery.pids,
                                           trial.query.cams, trial.gallery.cams, protocol,
                                           distance, max_rank)
        results.append(TrialResult(trial.trial, cmc, mAP, mINP, len(trial.query.paths),
                                   len(trial.gallery.paths)))
        if reranker is not None:
            reranked.append(_reranked_trial(trial, q_feats, g_feats, protocol, max_rank, reranker))
    return results + reranked


def _reranked_trial(trial: Trial, q_feats, g_feats, protocol: Protocol, max_rank: int,
                    reranker: reranking.TrialReranker) -> TrialResult:
    try:
        dist = reranker(check_features(q_feats, "query"), check_features(g_feats, "gallery"))
    except reranking.RerankError as e:
        raise EvaluationError(f"trial {trial.trial}: {e}") from e
    cmc, mAP, mINP = evaluate_rank(dist, trial.query.pids, trial.gallery.pids, trial.query.cams,
                                   trial.gallery.cams, max_rank, protocol)
    return TrialResult(trial.trial, cmc, mAP, mINP, len(trial.query.paths), len(trial.gallery.paths),
                       reranker.params.label)


def group_variants(results: Sequence[TrialResult]) -> "dict[str, List[TrialResult]]":
    """{variant label: its trial results}, plain first, in the order the variants appear."""
    groups: dict = {}
    for r in results:
        groups.setdefault(r.variant, []).append(r)
    return groups


def average_trials(results: Sequence[TrialResult]) -> Tuple[np.ndarray, np.float64, np.float64]:
    """Mean over trials, accumulated as AGW's test.py does (float32 CMC sum, then / n)."""
    if not results:
        raise EvaluationError("no trials to average")
    cmc, mAP, mINP = results[0].cmc, results[0].mAP, results[0].mINP
    for r in results[1:]:
        cmc, mAP, mINP = cmc + r.cmc, mAP + r.mAP, mINP + r.mINP
    n = len(results)
    return cmc / n, mAP / n, mINP / n


def summary(cmc: np.ndarray, mAP: float, mINP: float) -> dict:
    """Rank-1/5/10/20, mAP and mINP in percent (a rank past a short curve reads its last value)."""
    out = {f"rank{k}": float(cmc[min(k, len(cmc)) - 1]) * 100.0 for k in RANKS}
    out.update(mAP=float(mAP) * 100.0, mINP=float(mINP) * 100.0)
    return out
