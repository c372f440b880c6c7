"""Cross-modal ReID metrics: AGW-exact CMC / mAP / mINP under a dataset's ranking rule.

The metrics reproduce `eval_sysu` and `eval_regdb` of the AGW code
(github.com/mangye16/Cross-Modal-Re-ID-baseline, eval_metrics.py) to the last
digit, but vectorised over queries and chunked so a 10,000 x 10,000 evaluation
stays within a few hundred MB. Numpy only. Which rule applies (ids collapsed in the
CMC, cameras excluded, same-camera matches dropped) is the dataset's
(`kdem_tf.datasets`, `Dataset.ranking`); a rule may be given by the dataset's name.

Exactness notes (why the code looks the way it does):
  * ranks come from `np.argsort(dist, axis=1)` with numpy's default kind on the
    caller's distances, unconverted, so ties break exactly as in AGW;
  * excluded cameras (SYSU's cam3/cam2 filter) are dropped after sorting, as in AGW;
  * AP sums `precision * match` over the whole kept ranked list with numpy's
    pairwise row sum; rows of one group have one length, so the summation tree
    equals AGW's per-query 1-D sum;
  * CMC counts are integers until the final float32 division by the number of
    valid queries, which is what AGW's float32 sum over 0/1 rows gives.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple, Union

import numpy as np

from kdem_tf.evaluation import same_camera
from kdem_tf.evaluation.trials import EvaluationError, RankingRule

DISTANCES = ("cosine", "euclidean", "dot")
DEFAULT_CHUNK_BYTES = 256 << 20
RANKS = (1, 5, 10, 20)
Protocol = Union[RankingRule, str]  # a rule, or the name of the registered dataset whose rule it is


def ranking_rule(protocol: Optional[Protocol]) -> RankingRule:
    """The rule itself, or the rule of the registered dataset of that name."""
    if isinstance(protocol, RankingRule):
        return protocol
    if protocol is None:
        raise EvaluationError("no ranking rule: pass a RankingRule or a dataset name (kdem_tf.datasets.names())")
    from kdem_tf import datasets  # the registry (its modules import this package's types)

    try:
        return datasets.get(protocol).ranking
    except KeyError as error:
        raise EvaluationError(str(error.args[0])) from None

def _rows_per_chunk(num_gallery: int, chunk_bytes: int) -> int:
    # about ten live 8-byte arrays of shape [rows, num_gallery] per chunk
    return max(1, int(chunk_bytes // (max(num_gallery, 1) * 80)))


def _rank_group(order: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, collapse: bool,
                id_slot: np.ndarray, id_starts: np.ndarray):
    """Scores queries whose kept ranked lists share one length.

    Args:
        order: [R, K] gallery indices in ranked order, filtered rows.
        q_pids: [R] query ids. g_pids: [G] gallery ids.
        collapse: SYSU CMC (repeated ids collapsed to their first occurrence).
        id_slot: [G] column of each gallery item when grouped by id; id_starts: [U] group starts.
    Returns:
        valid [R] bool, hit [R] int (0-based CMC rank of the first hit), ap [R], inp [R] float64.
    """
    rows, kept = order.shape
    match = g_pids[order] == q_pids[:, None]
    num_rel = match.sum(axis=1)
    valid = num_rel > 0
    hit = np.full(rows, -1, dtype=np.int64)
    ap = np.zeros(rows)
    inp = np.zeros(rows)
    if not valid.any():
        return valid, hit, ap, inp
    match, order, num_rel = match[valid], order[valid], num_rel[valid]
    first = match.argmax(axis=1)
    last = kept - 1 - match[:, ::-1].argmax(axis=1)
    precision = np.cumsum(match, axis=1, dtype=np.int64) / np.arange(1, kept + 1, dtype=np.float64)
    precision *= match
    ap[valid] = precision.sum(axis=1) / num_rel
    inp[valid] = num_rel / (last + 1.0)
    if collapse:
        # position of every kept gallery item, laid out grouped by id; removed items stay at `kept`
        position = np.full((len(order), len(g_pids)), kept, dtype=np.int64)
        position[np.arange(len(order))[:, None], id_slot[order]] = np.arange(kept)
        first_of_id = np.minimum.reduceat(position, id_starts, axis=1)
        # the collapsed rank of the hit = number of distinct ids ranked before it
        hit[valid] = (first_of_id < first[:, None]).sum(axis=1)
    else:
        hit[valid] = first
    return valid, hit, ap, inp


def _rank_chunk(dist: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray,
                g_camids: np.ndarray, rule: RankingRule, id_slot: np.ndarray, id_starts: np.ndarray):
    """Per-query (valid, hit, ap, inp) of one chunk of distance rows [R, G]."""
    indices = np.argsort(dist, axis=1)  # default kind on the caller's dtype: AGW's tie order
    if rule.drop_same_camera:
        return same_camera.rank_group(indices, q_pids, q_camids, g_pids, g_camids,
                                      rule.collapse_ids, id_slot, id_starts)
    out = (np.zeros(len(q_pids), bool), np.full(len(q_pids), -1, np.int64),
           np.zeros(len(q_pids)), np.zeros(len(q_pids)))
    special = np.zeros(len(q_pids), bool)
    groups = []
    for camera, excluded in rule.excluded_cameras:  # e.g. SYSU: a cam3 query skips cam2 (same room)
        groups.append((q_camids == camera, excluded))
        special |= q_camids == camera
    groups.append((~special, ()))
    for mask, excluded in groups:
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            continue
        order = indices[rows]
        if excluded:
            keep = ~np.isin(g_camids[order], excluded)
            order = order[keep].reshape(rows.size, -1)
        result = _rank_group(order, q_pids[rows], g_pids, rule.collapse_ids, id_slot, id_starts)
        for target, value in zip(out, result):
            target[rows] = value
    return out


def _check_labels(num_q: int, num_g: int, q_pids, g_pids, q_camids, g_camids):
    if num_q == 0 or num_g == 0:
        raise EvaluationError(f"empty {'query' if num_q == 0 else 'gallery'}: nothing to evaluate")
    q_pids, g_pids = np.asarray(q_pids).reshape(-1), np.asarray(g_pids).reshape(-1)
    q_camids = np.zeros(num_q, np.int64) if q_camids is None else np.asarray(q_camids).reshape(-1)
    g_camids = np.zeros(num_g, np.int64) if g_camids is None else np.asarray(g_camids).reshape(-1)
    for name, arr, n in (("q_pids", q_pids, num_q), ("g_pids", g_pids, num_g),
                         ("q_camids", q_camids, num_q), ("g_camids", g_camids, num_g)):
        if len(arr) != n:
            raise EvaluationError(f"{name} has {len(arr)} entries, expected {n}")
    return q_pids, g_pids, q_camids, g_camids


def _evaluate_chunks(chunks: Iterator[Tuple[int, np.ndarray]], num_q: int, q_pids, g_pids,
                     q_camids, g_camids, max_rank: int, rule: RankingRule):
    """Runs the chunked ranking and reduces to (cmc [max_rank] float32, mAP, mINP) as AGW does."""
    num_g = len(g_pids)
    _, inverse = np.unique(g_pids, return_inverse=True)
    grouped = np.argsort(inverse, kind="stable")
    id_slot = np.empty(num_g, np.int64)
    id_slot[grouped] = np.arange(num_g)
    id_starts = np.flatnonzero(np.r_[True, np.diff(inverse[grouped]) != 0])
    valid, hit = np.zeros(num_q, bool), np.full(num_q, -1, np.int64)
    ap, inp = np.zeros(num_q), np.zeros(num_q)
    for start, dist in chunks:
        stop = start + len(dist)
        part = _rank_chunk(dist, q_pids[start:stop], q_camids[start:stop], g_pids, g_camids,
                           rule, id_slot, id_starts)
        valid[start:stop], hit[start:stop], ap[start:stop], inp[start:stop] = part
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise EvaluationError("no query identity appears in the gallery")
    max_rank = min(max_rank, num_g)  # AGW shortens the curve to the gallery size
    # a collapsed (SYSU) list may hold fewer than max_rank ids: the curve then stays flat
    hits = hit[valid & (hit < max_rank)]
    counts = np.cumsum(np.bincount(hits, minlength=max_rank)[:max_rank])
    cmc = counts.astype(np.float32) / np.float32(num_valid)
    return cmc, np.mean(ap[valid]), np.mean(inp[valid])


def evaluate_rank(distmat: np.ndarray, q_pids, g_pids, q_camids=None, g_camids=None,
                  max_rank: int = 20, protocol: Optional[Protocol] = None,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tuple[np.ndarray, np.float64, np.float64]:
    """CMC, mAP and mINP of a distance matrix, identical to AGW's eval_sysu / eval_regdb.

    Args:
        distmat: [Q, G] distances (smaller = more similar), any float dtype, used as given.
        q_pids, g_pids: [Q], [G] identity labels. q_camids, g_camids: [Q], [G] camera ids
            (read by rules that exclude or drop cameras).
        max_rank: CMC length (shortened to G when the gallery is smaller).
        protocol: a `RankingRule`, or the name of a registered dataset (its rule: e.g. "sysu",
            collapsed CMC and cam3 queries skip cam2; "regdb", plain; "llcm", eval_llcm's
            same id and camera dropped with a collapsed CMC; "manifest", torchreid's).
        chunk_bytes: working-memory budget; queries are processed in chunks.
    Returns:
        cmc: [max_rank] float32; mAP, mINP: float64 fractions (not percent).
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise EvaluationError(f"distmat must be 2-D [queries, gallery], got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    rule = ranking_rule(protocol)
    labels = _check_labels(num_q, num_g, q_pids, g_pids, q_camids, g_camids)
    rows = _rows_per_chunk(num_g, chunk_bytes)
    chunks = ((s, distmat[s:s + rows]) for s in range(0, num_q, rows))
    return _evaluate_chunks(chunks, num_q, *labels, max_rank=max_rank, rule=rule)


def check_features(features: np.ndarray, what: str) -> np.ndarray:
    """Validates [N, D] finite features and returns them as float64 (AGW keeps features in float64)."""
    features = np.asarray(features)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.number):
        raise EvaluationError(f"{what}: features must be a numeric [N, D] array, got shape "
                              f"{features.shape} dtype {features.dtype}")
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise EvaluationError(f"{what}: {int(bad.sum())} feature rows hold NaN or inf "
                              f"(first at row {int(np.flatnonzero(bad)[0])})")
    return features.astype(np.float64, copy=False)


def distance_chunks(q_feats: np.ndarray, g_feats: np.ndarray, distance: str = "cosine",
                    rows: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
    """Yields (first_row, [rows, G] float64 distances).

    cosine: -(q/|q|)·(g/|g|); dot: -q·g, AGW's test.py distance for features the model
    already L2-normalised; euclidean: |q - g| on raw features.
    """
    if distance not in DISTANCES:
        raise EvaluationError(f"distance must be one of {DISTANCES}, got {distance!r}")
    q = check_features(q_feats, "query")
    g = check_features(g_feats, "gallery")
    if q.shape[1] != g.shape[1]:
        raise EvaluationError(f"query features have {q.shape[1]} dims, gallery features {g.shape[1]}")
    if distance == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    rows = rows or _rows_per_chunk(len(g), DEFAULT_CHUNK_BYTES)
    g_sq = np.einsum("ij,ij->i", g, g) if distance == "euclidean" else None
    for start in range(0, len(q), rows):
        sim = np.matmul(q[start:start + rows], np.transpose(g))  # AGW: np.matmul(qf, gf.T)
        if distance == "euclidean":
            q_sq = np.einsum("ij,ij->i", q[start:start + rows], q[start:start + rows])
            yield start, np.sqrt(np.maximum(q_sq[:, None] + g_sq[None, :] - 2.0 * sim, 0.0))
        else:
            yield start, -sim


def evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids=None, g_camids=None,
                      protocol: Optional[Protocol] = None, distance: str = "cosine", max_rank: int = 20,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES):
    """Like `evaluate_rank`, from features [Q, D] and [G, D]; never holds the full [Q, G] matrix."""
    num_q, num_g = len(q_feats), len(g_feats)
    rule = ranking_rule(protocol)
    labels = _check_labels(num_q, num_g, q_pids, g_pids, q_camids, g_camids)
    chunks = distance_chunks(q_feats, g_feats, distance, _rows_per_chunk(num_g, chunk_bytes))
    return _evaluate_chunks(chunks, num_q, *labels, max_rank=max_rank, rule=rule)


