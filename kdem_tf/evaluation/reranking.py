"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017), vectorised and memory-aware.

`re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3)` returns the numbers
of the reference function that torchreid (torchreid/utils/rerank.py) and fast-reid
(fastreid/evaluation/rerank.py) ship, written here from its definition, not copied:

  1. all = query + gallery (N items); d(i, j) = dist(j, i)^2 in float32, each row divided by
     its maximum (the reference squares its input: feed it Euclidean distances);
  2. N(i, k) = the k + 1 first items of row i's ranking (numpy's default argsort, i itself
     included); R(i, k) = {j in N(i, k) : i in N(j, k)};
  3. R*(i) = R(i, k1) plus every R(c, round(k1 / 2)) of c in R(i, k1) that shares more than
     2/3 of its members with R(i, k1);
  4. V[i, j] = exp(-d(i, j)) / sum over R*(i), on R*(i); with k2 != 1, V[i] = mean of V over
     the k2 first items of row i's ranking (local query expansion);
  5. jaccard(q, g) = 1 - s / (2 - s), s = sum_j min(V[q, j], V[g, j]);
     final = (1 - lambda) jaccard + lambda d, query rows x gallery columns.

Where the reference builds [N, N] matrices (distances, argsort ranks, V, V after expansion)
and loops in Python, this module keeps [N, max(k1 + 1, k2)] ranks and sparse rows of V,
and processes rows in chunks of about `chunk_bytes`. Neighbour sets equal the reference's,
ties included (a row whose first ranks hold ties is argsorted in full, as the reference
does); the float32 sums are accumulated in another order, so values agree to ~1e-6.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Tuple

import numpy as np

DEFAULT_CHUNK_BYTES = 128 << 20
DEFAULT_CACHE_BYTES = 512 << 20  # keep the float32 [N, N] d rows between passes up to this size

RowSource = Callable[[int, int], np.ndarray]  # (start, stop) -> [stop - start, N] float32 d rows


class RerankError(ValueError):
    """Bad re-ranking input (parameters, shapes, non-finite distances); the message says which."""


@dataclasses.dataclass(frozen=True)
class RerankParams:
    """k1: k-reciprocal neighbourhood; k2: query expansion; lambda_value: weight of the original distance."""
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self):
        if not (isinstance(self.k1, (int, np.integer)) and self.k1 >= 1):
            raise RerankError(f"re-ranking k1 must be an integer >= 1, got {self.k1!r}")
        if not (isinstance(self.k2, (int, np.integer)) and self.k2 >= 1):
            raise RerankError(f"re-ranking k2 must be an integer >= 1, got {self.k2!r}")
        if not 0.0 <= float(self.lambda_value) <= 1.0:
            raise RerankError(f"re-ranking lambda must be in [0, 1], got {self.lambda_value!r}")

    @classmethod
    def parse(cls, text: str) -> "RerankParams":
        """"k1,k2,lambda", e.g. "20,6,0.3"."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            if len(parts) != 3:
                raise ValueError
            k1, k2, lambda_value = int(parts[0]), int(parts[1]), float(parts[2])
        except ValueError:
            raise RerankError(f"re-ranking parameters must be 'k1,k2,lambda' (e.g. '20,6,0.3'), "
                              f"got {text!r}") from None
        return cls(k1, k2, lambda_value)

    @property
    def label(self) -> str:
        """The name of re-ranked result rows, e.g. "rerank(k1=20,k2=6,λ=0.3)"."""
        return f"rerank(k1={self.k1},k2={self.k2},λ={self.lambda_value:g})"


# ----------------------------------------------------------------------------- row sources


def _rows_per_chunk(width: int, bytes_per_item: int, chunk_bytes: int) -> int:
    return max(1, int(chunk_bytes // max(1, width * bytes_per_item)))


def _normalise_rows(block: np.ndarray, first_row: int) -> np.ndarray:
    """Squares in the input dtype, casts to float32, divides each row by its maximum (as the reference)."""
    squared = np.power(block, 2).astype(np.float32)
    peak = squared.max(axis=1, keepdims=True)
    if not np.isfinite(squared).all() or (peak <= 0).any():
        bad = np.flatnonzero(~np.isfinite(squared).all(axis=1) | (peak[:, 0] <= 0))[0]
        raise RerankError(f"re-ranking: distance row {first_row + bad} of the query+gallery matrix is "
                          f"{'all zero' if np.isfinite(squared[bad]).all() else 'not finite'}")
    return squared / peak


def matrix_rows(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray) -> Tuple[int, int, RowSource]:
    """(Q, G, rows) where rows(s, e) = d rows s..e of [[q_q, q_g], [q_g^T, g_g]], without building it.

    Row i of d is column i of the squared block matrix (the reference transposes after its
    column-wise normalisation), which matters only when q_q or g_g are not exactly symmetric.
    """
    q_g, q_q, g_g = (np.asarray(a) for a in (q_g_dist, q_q_dist, g_g_dist))
    if q_g.ndim != 2:
        raise RerankError(f"re-ranking: q_g_dist must be 2-D [Q, G], got shape {q_g.shape}")
    num_q, num_g = q_g.shape
    if q_q.shape != (num_q, num_q) or g_g.shape != (num_g, num_g):
        raise RerankError(f"re-ranking: q_q_dist {q_q.shape} and g_g_dist {g_g.shape} must be "
                          f"[{num_q}, {num_q}] and [{num_g}, {num_g}] for q_g_dist {q_g.shape}")
    if num_q == 0 or num_g == 0:
        raise RerankError(f"re-ranking: empty {'query' if num_q == 0 else 'gallery'}")
    dtype = np.result_type(q_g, q_q, g_g)

    def rows(start: int, stop: int) -> np.ndarray:
        parts = []
        if start < num_q:  # query rows: columns of q_q, then rows of q_g
            s, e = start, min(stop, num_q)
            parts.append(np.concatenate([q_q[:, s:e].T, q_g[s:e]], axis=1).astype(dtype, copy=False))
        if stop > num_q:  # gallery rows: columns of q_g, then columns of g_g
            s, e = max(start, num_q) - num_q, stop - num_q
            parts.append(np.concatenate([q_g[:, s:e].T, g_g[:, s:e].T], axis=1).astype(dtype, copy=False))
        return _normalise_rows(parts[0] if len(parts) == 1 else np.concatenate(parts), start)
    return num_q, num_g, rows


def _unit_rows(feats, what: str) -> np.ndarray:
    x = np.asarray(feats, np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise RerankError(f"re-ranking: {what} features must be a non-empty [N, D] array, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] float64 |a_i - b_j| of unit rows, by the formula `feature_rows` uses."""
    sim = np.matmul(a, b.T)
    return np.sqrt(np.maximum(np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :]
                              - 2.0 * sim, 0.0))


def feature_rows(q_feats: np.ndarray, g_feats: np.ndarray) -> Tuple[int, int, RowSource]:
    """(Q, G, rows) of Euclidean distances between L2-normalised features, computed chunk by chunk.

    Never holds the [Q, Q] or [G, G] matrices; d rows are |x_i - x_j|^2 / max_j, float64 features.
    """
    q, g = _unit_rows(q_feats, "query"), _unit_rows(g_feats, "gallery")
    if q.shape[1] != g.shape[1]:
        raise RerankError(f"re-ranking: query features have {q.shape[1]} dims, gallery features {g.shape[1]}")
    both = np.concatenate([q, g])

    def rows(start: int, stop: int) -> np.ndarray:
        return _normalise_rows(_euclidean(both[start:stop], both), start)
    return len(q), len(g), rows


class TrialReranker:
    """Re-ranks trial after trial; while the query features stay the same (SYSU's trials share
    their queries), their [Q, Q] distances are computed once and kept (when they fit in
    `cache_bytes`, float64), else each call is `rerank_features`."""

    def __init__(self, params: "RerankParams", cache_bytes: int = DEFAULT_CACHE_BYTES):
        self.params, self.cache_bytes = params, cache_bytes
        self._queries = self._q_q = None

    def __call__(self, q_feats, g_feats) -> np.ndarray:
        """[Q, G] float32 re-ranked distances (Euclidean between L2-normalised features)."""
        q, g = _unit_rows(q_feats, "query"), _unit_rows(g_feats, "gallery")
        if q.shape[1] != g.shape[1]:
            raise RerankError(f"re-ranking: query features have {q.shape[1]} dims, gallery features {g.shape[1]}")
        if len(q) * len(q) * 8 > self.cache_bytes:
            return rerank_features(q, g, self.params)
        if self._queries is None or self._queries.shape != q.shape or not np.array_equal(self._queries, q):
            self._queries, self._q_q = q, _euclidean(q, q)
        p = self.params
        return re_ranking(_euclidean(q, g), self._q_q, _euclidean(g, g), p.k1, p.k2, p.lambda_value)


def _chunks(total: int, rows: int) -> Iterator[Tuple[int, int]]:
    for start in range(0, total, rows):
        yield start, min(total, start + rows)


# ----------------------------------------------------------------------------- neighbours


def _first_ranks(d: np.ndarray, width: int) -> np.ndarray:
    """The first `width` columns of np.argsort(d, axis=1), without sorting whole rows where possible.

    A row whose `width` smallest values are distinct and strictly below the rest has one
    possible answer; other rows (ties) get numpy's full default argsort, as the reference.
    """
    if width >= d.shape[1]:
        return np.argsort(d, axis=1)
    part = np.argpartition(d, width - 1, axis=1)[:, :width]
    values = np.take_along_axis(d, part, axis=1)
    order = np.argsort(values, axis=1, kind="stable")
    ranks = np.take_along_axis(part, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    distinct = (np.diff(values, axis=1) > 0).all(axis=1)
    unique_last = (d == values[:, -1:]).sum(axis=1) == 1
    tied = np.flatnonzero(~(distinct & unique_last))
    if tied.size:
        ranks[tied] = np.argsort(d[tied], axis=1)[:, :width]
    return ranks


def _reciprocal(top: np.ndarray, rows: slice) -> np.ndarray:
    """[r, k+1] bool: j = top[i, p] is a k-reciprocal neighbour of i (i is in top[j])."""
    ids = np.arange(rows.start, rows.stop)[:, None, None]
    return (top[top[rows]] == ids).any(axis=2)


def _expansion_sets(top1: np.ndarray, recip1: np.ndarray, top_h: np.ndarray, recip_h: np.ndarray,
                    rows: slice, sentinel: int) -> np.ndarray:
    """[r, W] sorted item ids of R*(i) per row, unused slots = sentinel (>= every id)."""
    own, own_ok = top1[rows], recip1[rows]                       # R(i, k1): [r, w1]
    cand_ids, cand_ok = top_h[own], recip_h[own]                 # R(c, k1/2) per c: [r, w1, wh]
    in_own = ((cand_ids[..., None] == own[:, None, None, :]) & own_ok[:, None, None, :]).any(axis=3)
    shared = (in_own & cand_ok).sum(axis=2)
    size = cand_ok.sum(axis=2)
    take = own_ok & (shared > 2. / 3 * size)                     # the reference's test, strict
    members = np.concatenate([np.where(own_ok, own, sentinel),
                              np.where(take[..., None] & cand_ok, cand_ids, sentinel).reshape(len(own), -1)],
                             axis=1)
    members.sort(axis=1)
    repeat = np.zeros_like(members, dtype=bool)
    repeat[:, 1:] = members[:, 1:] == members[:, :-1]
    members[repeat] = sentinel
    members.sort(axis=1)
    width = int((members < sentinel).sum(axis=1).max())
    return members[:, :max(width, 1)]


# ----------------------------------------------------------------------------- sparse V


@dataclasses.dataclass
class SparseRows:
    """CSR rows of V: row i holds values[indptr[i]:indptr[i+1]] at columns indices[...] (ascending)."""
    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @classmethod
    def from_padded(cls, ids: np.ndarray, vals: np.ndarray, sentinel: int) -> "SparseRows":
        keep = ids < sentinel
        indptr = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int64)
        return cls(indptr, ids[keep].astype(np.int64), vals[keep])

    @classmethod
    def concat(cls, parts) -> "SparseRows":
        ptrs, offset = [np.zeros(1, np.int64)], 0
        for p in parts:
            ptrs.append(p.indptr[1:] + offset)
            offset += p.indptr[-1]
        return cls(np.concatenate(ptrs), np.concatenate([p.indices for p in parts]),
                   np.concatenate([p.values for p in parts]))

    def row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))


def _weights(d_rows: np.ndarray, members: np.ndarray, sentinel: int) -> np.ndarray:
    """exp(-d) on R*(i), normalised to sum 1 per row, float32 as the reference."""
    valid = members < sentinel
    d = np.take_along_axis(d_rows, np.where(valid, members, 0), axis=1)
    w = np.where(valid, np.exp(-d), np.float32(0))
    return (w / w.sum(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)


def _query_expansion(v: SparseRows, ranks: np.ndarray, k2: int, rows: slice) -> SparseRows:
    """Rows of mean(V[ranks[i, :k2]]) as sparse rows (summed in ranking order, float32)."""
    nbrs = ranks[rows, :k2]                                      # [r, k2]
    starts, stops = v.indptr[nbrs], v.indptr[nbrs + 1]
    counts = (stops - starts).reshape(-1)
    owner = np.repeat(np.arange(len(nbrs)), (stops - starts).sum(axis=1))
    flat = np.repeat(starts.reshape(-1) - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + \
        np.arange(counts.sum())
    cols, vals = v.indices[flat], v.values[flat]
    order = np.lexsort((cols, owner))                            # stable: ranking order within a column
    owner, cols, vals = owner[order], cols[order], vals[order]
    first = np.r_[True, (owner[1:] != owner[:-1]) | (cols[1:] != cols[:-1])]
    starts_at = np.flatnonzero(first)
    sums = np.add.reduceat(vals, starts_at) if len(vals) else vals
    indptr = np.searchsorted(owner[starts_at], np.arange(len(nbrs) + 1))
    return SparseRows(indptr.astype(np.int64), cols[starts_at], (sums / np.float32(k2)).astype(np.float32))


def _jaccard_rows(vq: SparseRows, gallery_by_col: Tuple[np.ndarray, np.ndarray, np.ndarray],
                  num_g: int) -> np.ndarray:
    """[r, G] float32 1 - s / (2 - s), s = sum_j min(Vq[i, j], Vg[g, j])."""
    col_ptr, g_ids, g_vals = gallery_by_col
    owner = vq.row_ids()
    starts, stops = col_ptr[vq.indices], col_ptr[vq.indices + 1]
    counts = stops - starts
    pair = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    mins = np.minimum(np.repeat(vq.values, counts), g_vals[pair])
    s = np.bincount(np.repeat(owner, counts) * num_g + g_ids[pair], weights=mins,
                    minlength=(len(vq.indptr) - 1) * num_g).reshape(-1, num_g).astype(np.float32)
    return 1 - s / (np.float32(2.) - s)


def _by_column(v: SparseRows, first_row: int, num_cols: int):
    """Inverted index of rows first_row.. of V: (column pointers [N+1], row - first_row, value)."""
    lo = v.indptr[first_row]
    cols = v.indices[lo:]
    rows = v.row_ids()[lo:] - first_row
    order = np.argsort(cols, kind="stable")
    col_ptr = np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=num_cols))])
    return col_ptr, rows[order], v.values[lo:][order]


# ----------------------------------------------------------------------------- driver


def rerank_rows(num_q: int, num_g: int, rows: RowSource, params: RerankParams = RerankParams(),
                chunk_bytes: int = DEFAULT_CHUNK_BYTES, cache_bytes: int = DEFAULT_CACHE_BYTES) -> np.ndarray:
    """Re-ranked [Q, G] float32 distances from a source of d rows (see `matrix_rows`, `feature_rows`).

    d rows are read twice (ranks, then weights); they are kept from the first pass when the
    float32 [N, N] fits in `cache_bytes`, else computed again (same chunks, same values).
    """
    n = num_q + num_g
    k1, k2, lam = params.k1, params.k2, params.lambda_value
    half = int(np.around(k1 / 2.))
    w1, wh, kq = min(k1 + 1, n), min(half + 1, n), min(k2, n)
    # one chunking for both passes over d rows, so a feature source computes the same rows twice
    step = min(_rows_per_chunk(n, 24, chunk_bytes),              # a d chunk with its sort buffers
               _rows_per_chunk(w1 * w1 + w1 * wh * w1, 2, chunk_bytes))  # the set comparisons
    cache = [] if n * n * 4 <= cache_bytes else None
    ranks = []
    for s, e in _chunks(n, step):
        d = rows(s, e)
        ranks.append(_first_ranks(d, max(w1, kq)))
        if cache is not None:
            cache.append(d)
    ranks = np.concatenate(ranks)
    top1, top_h = ranks[:, :w1], ranks[:, :wh]
    recip1 = np.concatenate([_reciprocal(top1, slice(s, e)) for s, e in _chunks(n, step)])
    recip_h = np.concatenate([_reciprocal(top_h, slice(s, e)) for s, e in _chunks(n, step)])
    parts, out = [], np.empty((num_q, num_g), np.float32)
    for chunk, (s, e) in enumerate(_chunks(n, step)):
        members = _expansion_sets(top1, recip1, top_h, recip_h, slice(s, e), n)
        d = rows(s, e) if cache is None else cache[chunk]
        if s < num_q:
            out[s:min(e, num_q)] = d[:num_q - s, num_q:]
        parts.append(SparseRows.from_padded(members, _weights(d, members, n), n))
    del cache
    v = SparseRows.concat(parts)
    if k2 != 1:  # the reference skips the expansion for k2 == 1 (even when a tie ranks another item first)
        qe_step = _rows_per_chunk(kq * (len(v.indices) // n + 1), 40, chunk_bytes)
        v = SparseRows.concat([_query_expansion(v, ranks, kq, slice(s, e)) for s, e in _chunks(n, qe_step)])
    gallery = _by_column(v, num_q, n)
    pairs_per_row = max(1, int(len(gallery[1]) / n * (len(v.indices) / n)))
    j_step = max(1, min(_rows_per_chunk(num_g, 16, chunk_bytes), _rows_per_chunk(pairs_per_row, 40, chunk_bytes)))
    for s, e in _chunks(num_q, j_step):
        lo, hi = v.indptr[s], v.indptr[e]
        vq = SparseRows(v.indptr[s:e + 1] - lo, v.indices[lo:hi], v.values[lo:hi])
        out[s:e] = _jaccard_rows(vq, gallery, num_g) * (1 - lam) + out[s:e] * lam
    return out


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = RerankParams.k1, k2: int = RerankParams.k2,
               lambda_value: float = RerankParams.lambda_value,
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, cache_bytes: int = DEFAULT_CACHE_BYTES) -> np.ndarray:
    """The reference re_ranking (torchreid / fast-reid signature): [Q, G] float32 re-ranked distances.

    Args: q_g_dist [Q, G], q_q_dist [Q, Q], g_g_dist [G, G] distances (Euclidean; they are squared).
    """
    return rerank_rows(*matrix_rows(q_g_dist, q_q_dist, g_g_dist), RerankParams(k1, k2, lambda_value),
                       chunk_bytes, cache_bytes)


def rerank_features(q_feats, g_feats, params: RerankParams = RerankParams(),
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES, cache_bytes: int = DEFAULT_CACHE_BYTES) -> np.ndarray:
    """Re-ranked [Q, G] float32 distances from features, Euclidean between L2-normalised rows.

    Equals `re_ranking` on the matrices of those distances (the tests check it) and never holds
    an [N, N] matrix beyond the optional float32 cache: memory is O(N * (k1 + 1)^2) plus one chunk.
    """
    return rerank_rows(*feature_rows(q_feats, g_feats), params, chunk_bytes, cache_bytes)
