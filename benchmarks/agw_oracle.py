"""AGW's per-query evaluation loops, the oracle the vectorised `kdem_tf.evaluation` must equal.

They follow AGW's eval_metrics.py step by step, one query at a time
(github.com/mangye16/Cross-Modal-Re-ID-baseline, eval_metrics.py, commit a903f42, functions
eval_sysu and eval_regdb): the same numpy operations in the same order, so their numbers are
AGW's. Used by tests/test_evaluation.py (exact equality) and benchmarks/bench_evaluation.py (speed).
"""
from __future__ import annotations

import numpy as np


def agw_eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    """AGW eval_sysu, per query: collapsed CMC over all queries, AP/INP over valid ones."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    collapsed, all_ap, all_inp, num_valid = [], [], [], 0.0
    for i in range(num_q):
        order = indices[i]
        keep = np.invert((q_camids[i] == 3) & (g_camids[order] == 2))
        ranked_ids = g_pids[order][keep]
        first_index = np.unique(ranked_ids, return_index=True)[1]
        distinct = np.asarray([ranked_ids[j] for j in sorted(first_index)])
        collapsed.append((distinct == q_pids[i]).astype(np.int32).cumsum()[:max_rank])
        hits = (ranked_ids == q_pids[i]).astype(np.int32)
        if not np.any(hits):
            continue
        cum = hits.cumsum()
        last = np.max(np.where(hits == 1))
        all_inp.append(cum[last] / (last + 1.0))
        num_valid += 1.0
        precision = np.asarray([c / (j + 1.0) for j, c in enumerate(hits.cumsum())]) * hits
        all_ap.append(precision.sum() / hits.sum())
    assert num_valid > 0
    cmc = np.asarray(collapsed).astype(np.float32).sum(0) / num_valid
    return cmc, np.mean(all_ap), np.mean(all_inp)


def agw_eval_regdb(distmat, q_pids, g_pids, max_rank=20):
    """AGW eval_regdb, per query: standard CMC, AP and INP over valid queries."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    all_cmc, all_ap, all_inp, num_valid = [], [], [], 0.0
    for i in range(num_q):
        hits = (g_pids[indices[i]] == q_pids[i]).astype(np.int32)
        if not np.any(hits):
            continue
        cum = hits.cumsum()
        last = np.max(np.where(hits == 1))
        all_inp.append(cum[last] / (last + 1.0))
        cum[cum > 1] = 1
        all_cmc.append(cum[:max_rank])
        num_valid += 1.0
        precision = np.asarray([c / (j + 1.0) for j, c in enumerate(hits.cumsum())]) * hits
        all_ap.append(precision.sum() / hits.sum())
    assert num_valid > 0
    cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid
    return cmc, np.mean(all_ap), np.mean(all_inp)
