"""Ranking metrics with the per-query rule "gallery images of the same id and camera are dropped".

The rule of torchreid's `eval_market1501` and of the LLCM authors' `eval_llcm`
(ZYK100/LLCM, DEEN/eval_metrics.py). Vectorised over the rows of a chunk: instead of
compressing each ranked list (its kept length differs per query), dropped items are
masked and every statistic is taken at the item's position among the kept ones.

    AP   = mean over the kept matches of (matches so far / kept position)
    INP  = matches / kept position of the last match
    CMC  = kept position of the first match (plain), or with `collapse` (eval_llcm's
           `new_all_cmc`) the number of distinct ids whose first kept item is ranked
           before it.

The sums run over the matches only (AGW/torchreid sum over the whole compressed list,
zeros included), so AP can differ from theirs in the last bits (~1e-16); CMC counts
are integers and equal.
"""
from __future__ import annotations

import numpy as np


def rank_group(order: np.ndarray, q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray,
               g_cams: np.ndarray, collapse: bool, id_slot: np.ndarray, id_starts: np.ndarray):
    """Scores queries against their ranked gallery.

    Args:
        order: [R, G] gallery indices in ranked order (np.argsort of the distances).
        q_pids, q_cams: [R]. g_pids, g_cams: [G].
        collapse: eval_llcm's CMC (repeated ids collapsed to their first kept occurrence).
        id_slot: [G] column of each gallery item when grouped by id; id_starts: [U] group starts.
    Returns:
        valid [R] bool, hit [R] int (0-based CMC rank of the first hit), ap [R], inp [R] float64.
    """
    rows, num_g = order.shape
    ranked_pids = g_pids[order]
    same_id = ranked_pids == q_pids[:, None]
    keep = ~(same_id & (g_cams[order] == q_cams[:, None]))
    match = same_id & keep
    num_rel = match.sum(axis=1)
    valid = num_rel > 0
    hit = np.full(rows, -1, dtype=np.int64)
    ap, inp = np.zeros(rows), np.zeros(rows)
    if not valid.any():
        return valid, hit, ap, inp
    match, keep, order, num_rel = match[valid], keep[valid], order[valid], num_rel[valid]
    kept_pos = np.cumsum(keep, axis=1, dtype=np.int64)  # 1-based position among kept items
    matches_so_far = np.cumsum(match, axis=1, dtype=np.int64)
    # leading dropped items have kept position 0; they are never matches
    precision = np.where(match, matches_so_far / np.maximum(kept_pos, 1).astype(np.float64), 0.0)
    ap[valid] = precision.sum(axis=1) / num_rel
    last = num_g - 1 - match[:, ::-1].argmax(axis=1)
    first = match.argmax(axis=1)
    picked = np.arange(len(order))
    inp[valid] = num_rel / kept_pos[picked, last].astype(np.float64)
    if collapse:
        # kept position of every gallery item, laid out grouped by id; dropped items sit past the end
        position = np.full((len(order), num_g), num_g + 1, dtype=np.int64)
        position[picked[:, None], id_slot[order]] = np.where(keep, kept_pos, num_g + 1)
        first_of_id = np.minimum.reduceat(position, id_starts, axis=1)
        hit[valid] = (first_of_id < kept_pos[picked, first][:, None]).sum(axis=1)
    else:
        hit[valid] = kept_pos[picked, first] - 1
    return valid, hit, ap, inp
