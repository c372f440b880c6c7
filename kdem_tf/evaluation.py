"""Cross-modal ReID evaluation: AGW-exact CMC / mAP / mINP and the SYSU-MM01 / RegDB protocols.

The metrics reproduce `eval_sysu` and `eval_regdb` of the AGW code
(github.com/mangye16/Cross-Modal-Re-ID-baseline, eval_metrics.py) to the last
digit, but vectorised over queries and chunked so a 10,000 x 10,000 evaluation
stays within a few hundred MB. The metric code is numpy only; the protocol
builders read the dataset layout through `kdem_tf.data.datasets` (imported
lazily, because that module imports TensorFlow).

Exactness notes (why the code looks the way it does):
  * ranks come from `np.argsort(dist, axis=1)` with numpy's default kind on the
    caller's distances, unconverted, so ties break exactly as in AGW;
  * the SYSU cam3/cam2 filter is applied after sorting, as in AGW;
  * AP sums `precision * match` over the whole kept ranked list with numpy's
    pairwise row sum; rows of one group have one length, so the summation tree
    equals AGW's per-query 1-D sum;
  * CMC counts are integers until the final float32 division by the number of
    valid queries, which is what AGW's float32 sum over 0/1 rows gives.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from kdem_tf import reranking
from kdem_tf.image_contract import INFRARED, VISIBLE
from kdem_tf.variants import PLAIN  # the variant label of results without re-ranking or flip

SYSU_GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SYSU_QUERY_CAMERAS = (3, 6)
REGDB_DIRECTIONS = ("v2i", "i2v")
DISTANCES = ("cosine", "euclidean", "dot")
PROTOCOLS = ("sysu", "regdb", "llcm", "manifest")
# protocols whose queries drop the gallery images of their own id and camera (kdem_tf.protocols);
# True: the CMC collapses repeated ids (LLCM's eval_llcm), False: plain (torchreid's eval_market1501)
SAME_CAMERA_PROTOCOLS = {"llcm": True, "manifest": False}
MULTI_SHOT = 10  # gallery images per id and camera in multi-shot mode
DEFAULT_CHUNK_BYTES = 256 << 20
RANKS = (1, 5, 10, 20)


class EvaluationError(ValueError):
    """Bad evaluation input (features, protocol files, empty splits). The message says what and where."""


# ----------------------------------------------------------------------------- metrics


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
                g_camids: np.ndarray, protocol: str, id_slot: np.ndarray, id_starts: np.ndarray):
    """Per-query (valid, hit, ap, inp) of one chunk of distance rows [R, G]."""
    indices = np.argsort(dist, axis=1)  # default kind on the caller's dtype: AGW's tie order
    if protocol in SAME_CAMERA_PROTOCOLS:
        from kdem_tf.protocols import same_camera

        return same_camera.rank_group(indices, q_pids, q_camids, g_pids, g_camids,
                                      SAME_CAMERA_PROTOCOLS[protocol], id_slot, id_starts)
    out = (np.zeros(len(q_pids), bool), np.full(len(q_pids), -1, np.int64),
           np.zeros(len(q_pids)), np.zeros(len(q_pids)))
    if protocol == "sysu":
        groups = [(q_camids == 3, True), (q_camids != 3, False)]
    else:
        groups = [(np.ones(len(q_pids), bool), False)]
    for mask, drop_cam2 in groups:
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            continue
        order = indices[rows]
        if drop_cam2:  # SYSU: a cam3 query never matches against cam2 (same room)
            keep = g_camids[order] != 2
            order = order[keep].reshape(rows.size, -1)
        result = _rank_group(order, q_pids[rows], g_pids, protocol == "sysu", id_slot, id_starts)
        for target, value in zip(out, result):
            target[rows] = value
    return out


def _check_labels(num_q: int, num_g: int, q_pids, g_pids, q_camids, g_camids, protocol: str):
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
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
                     q_camids, g_camids, max_rank: int, protocol: str):
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
                           protocol, id_slot, id_starts)
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
                  max_rank: int = 20, protocol: str = "sysu",
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Tuple[np.ndarray, np.float64, np.float64]:
    """CMC, mAP and mINP of a distance matrix, identical to AGW's eval_sysu / eval_regdb.

    Args:
        distmat: [Q, G] distances (smaller = more similar), any float dtype, used as given.
        q_pids, g_pids: [Q], [G] identity labels. q_camids, g_camids: [Q], [G] camera ids
            (SYSU only: a cam3 query ignores cam2 gallery items).
        max_rank: CMC length (shortened to G when the gallery is smaller).
        protocol: "sysu" (collapsed CMC over all queries / valid queries), "regdb", "llcm"
            (eval_llcm: same id and camera dropped, collapsed CMC) or "manifest" (torchreid's
            eval_market1501: same id and camera dropped, plain CMC); see kdem_tf.protocols.
        chunk_bytes: working-memory budget; queries are processed in chunks.
    Returns:
        cmc: [max_rank] float32; mAP, mINP: float64 fractions (not percent).
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise EvaluationError(f"distmat must be 2-D [queries, gallery], got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    labels = _check_labels(num_q, num_g, q_pids, g_pids, q_camids, g_camids, protocol)
    rows = _rows_per_chunk(num_g, chunk_bytes)
    chunks = ((s, distmat[s:s + rows]) for s in range(0, num_q, rows))
    return _evaluate_chunks(chunks, num_q, *labels, max_rank=max_rank, protocol=protocol)


def eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 20):
    """AGW's eval_sysu: (cmc [max_rank] float32, mAP, mINP)."""
    return evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, protocol="sysu")


def eval_regdb(distmat, q_pids, g_pids, max_rank: int = 20):
    """AGW's eval_regdb: (cmc [max_rank] float32, mAP, mINP)."""
    return evaluate_rank(distmat, q_pids, g_pids, None, None, max_rank, protocol="regdb")


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
                      protocol: str = "sysu", distance: str = "cosine", max_rank: int = 20,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES):
    """Like `evaluate_rank`, from features [Q, D] and [G, D]; never holds the full [Q, G] matrix."""
    num_q, num_g = len(q_feats), len(g_feats)
    labels = _check_labels(num_q, num_g, q_pids, g_pids, q_camids, g_camids, protocol)
    chunks = distance_chunks(q_feats, g_feats, distance, _rows_per_chunk(num_g, chunk_bytes))
    return _evaluate_chunks(chunks, num_q, *labels, max_rank=max_rank, protocol=protocol)


# ----------------------------------------------------------------------------- protocols


@dataclasses.dataclass(frozen=True)
class Split:
    """One side of a trial: paths relative to the data root, with [N] ids and cameras."""
    paths: Tuple[str, ...]
    pids: np.ndarray
    cams: np.ndarray
    modality: str  # "visible" or "infrared"; a manifest side may mix them: "visible+infrared"
    modalities: Tuple[str, ...] = ()  # per path, when the side mixes modalities; () = all `modality`

    def path_modalities(self) -> Tuple[str, ...]:
        """The modality of each path."""
        return self.modalities or (self.modality,) * len(self.paths)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One evaluation trial (SYSU: a gallery draw 0..9; RegDB: an index split 1..10)."""
    trial: int
    query: Split
    gallery: Split


def _split(paths: Sequence[str], pids: Sequence[int], cams: Sequence[int], modality: str,
           what: str) -> Split:
    if not paths:
        raise EvaluationError(f"empty {what}: the protocol selected no images")
    return Split(tuple(paths), np.asarray(pids, np.int64), np.asarray(cams, np.int64), modality)


def _datasets():
    from kdem_tf.data import datasets  # imports TensorFlow: only the protocol builders need it
    return datasets


def _sysu_path(path: str) -> Tuple[int, int]:
    """(camera, person id) of "camC/PPPP/name": the camera id comes from the path, as in AGW."""
    cam, pid = path.split("/")[:2]
    return int(cam[3:]), int(pid)


def sysu_query(root: str) -> Split:
    """Every infrared test image, ordered as AGW's process_query_sysu (same for all/indoor).

    Order: test ids ascending, then cam3 before cam6, then sorted file names.
    """
    datasets = _datasets()
    try:
        query, _ = datasets.sysu_test_records(root)
    except datasets.DatasetError as e:
        raise EvaluationError(str(e)) from e
    paths = [r.path for r in query]
    cams, pids = zip(*(_sysu_path(p) for p in paths)) if paths else ((), ())
    return _split(paths, pids, cams, INFRARED, "SYSU query (no cam3/cam6 images of test ids)")


def sysu_gallery(root: str, mode: str = "all", trial: int = 0, multi_shot: bool = False) -> Split:
    """The gallery of one trial, drawn exactly as AGW's process_gallery_sysu(mode, trial).

    `random.seed(trial)`, then for each test id ascending, for each visible camera of
    the mode in order, when that id has images there: `random.choice(sorted files)`.
    Multi-shot (not in AGW): `random.sample(sorted files, min(10, n))` in the same loop.
    """
    if mode not in SYSU_GALLERY_CAMERAS:
        raise EvaluationError(f"SYSU mode must be 'all' or 'indoor', got {mode!r}")
    datasets = _datasets()
    try:
        ids = sorted(datasets.read_sysu_ids(root, "test"))
    except datasets.DatasetError as e:
        raise EvaluationError(str(e)) from e
    return draw_sysu_gallery(ids, lambda cam, pid: datasets.sysu_image_files(root, cam, pid), mode, trial,
                             multi_shot)


def draw_sysu_gallery(ids: Sequence[int], files_of: Callable[[int, int], List[str]], mode: str = "all",
                      trial: int = 0, multi_shot: bool = False) -> Split:
    """The SYSU single-/multi-shot gallery draw of one trial, whatever lists the files.

    ids: test ids; files_of(camera, pid): sorted file names of that id under that camera
    (the raw folder's listing, or the names in a preprocessed gallery split).
    """
    if mode not in SYSU_GALLERY_CAMERAS:
        raise EvaluationError(f"SYSU mode must be 'all' or 'indoor', got {mode!r}")
    rng = random.Random(trial)  # same stream as random.seed(trial) + random.choice
    paths = []
    for pid in sorted(ids):
        for cam in SYSU_GALLERY_CAMERAS[mode]:
            files = files_of(cam, pid)
            if not files:
                continue
            chosen = rng.sample(files, min(MULTI_SHOT, len(files))) if multi_shot else [rng.choice(files)]
            paths.extend(f"cam{cam}/{pid:04d}/{name}" for name in chosen)
    cams, pids = zip(*(_sysu_path(p) for p in paths)) if paths else ((), ())
    return _split(paths, pids, cams, VISIBLE, f"SYSU gallery (trial {trial}, mode {mode})")


def sysu_trials_from_paths(query_paths: Sequence[str], gallery_paths: Sequence[str], mode: str = "all",
                           trials: int = 10, multi_shot: bool = False) -> List[Trial]:
    """SYSU trials from the query and gallery pools of a preprocessed dataset (their "camC/PPPP/name"
    paths): the same query order and gallery draws as `sysu_trials` on the raw folder."""
    by_folder: dict = {}
    for path in gallery_paths:
        cam, pid = _sysu_path(path)
        by_folder.setdefault((cam, pid), []).append(path.split("/")[2])
    for names in by_folder.values():
        names.sort()
    keys = {p: (_sysu_path(p)[1], _sysu_path(p)[0], p.split("/")[2]) for p in query_paths}
    ordered = sorted(query_paths, key=keys.get)  # AGW's order: id, then camera, then file name
    cams, pids = zip(*(_sysu_path(p) for p in ordered)) if ordered else ((), ())
    query = _split(ordered, pids, cams, INFRARED, "SYSU query split")
    ids = sorted({pid for _, pid in by_folder} | set(pids))
    return [Trial(t, query, draw_sysu_gallery(ids, lambda cam, pid: by_folder.get((cam, pid), []), mode, t,
                                              multi_shot)) for t in range(trials)]


def regdb_trial_from_records(trial: int, visible: Tuple[Sequence[str], Sequence[int]],
                             thermal: Tuple[Sequence[str], Sequence[int]], direction: str = "v2i") -> Trial:
    """One RegDB trial from (paths, identity ids) of its visible and thermal test lists."""
    if direction not in REGDB_DIRECTIONS:
        raise EvaluationError(f"RegDB direction must be 'v2i' or 'i2v', got {direction!r}")
    sides = {name: _split(list(paths), list(pids), [cam] * len(paths), modality, f"RegDB trial {trial} {name}")
             for name, (paths, pids), modality, cam in (("visible", visible, VISIBLE, 1),
                                                         ("thermal", thermal, INFRARED, 2))}
    query, gallery = ("visible", "thermal") if direction == "v2i" else ("thermal", "visible")
    return Trial(trial, sides[query], sides[gallery])


def sysu_trials(root: str, mode: str = "all", trials: int = 10, multi_shot: bool = False,
                sampling: str = "agw") -> List[Trial]:
    """SYSU-MM01 trials 0..trials-1: one infrared query set, one visible gallery draw per trial.

    sampling: "agw" (AGW's seeded draw, `sysu_gallery`) or "official" (the dataset's
    exp/rand_perm_cam.mat, `kdem_tf.sysu_official`).
    """
    if sampling not in GALLERY_SAMPLINGS:
        raise EvaluationError(f"gallery sampling must be one of {GALLERY_SAMPLINGS}, got {sampling!r}")
    query = sysu_query(root)
    if sampling == "official":
        from kdem_tf import sysu_official  # imports this module

        perm, source = sysu_official.read_official_permutation(root)
        return [Trial(t, query, sysu_official.sysu_official_gallery(root, mode, t, multi_shot, perm, source))
                for t in range(trials)]
    return [Trial(t, query, sysu_gallery(root, mode, t, multi_shot)) for t in range(trials)]


GALLERY_SAMPLINGS = ("agw", "official")


def regdb_trials(root: str, trials: int = 10, direction: str = "v2i") -> List[Trial]:
    """RegDB trials 1..trials from idx/test_{visible,thermal}_{t}.txt; ids are the file labels.

    v2i: query visible, gallery thermal; i2v (AGW --tvsearch): the reverse.
    """
    if direction not in REGDB_DIRECTIONS:
        raise EvaluationError(f"RegDB direction must be 'v2i' or 'i2v', got {direction!r}")
    datasets = _datasets()
    out = []
    for t in range(1, trials + 1):
        sides = {}
        for name, modality, cam in (("visible", VISIBLE, 1), ("thermal", INFRARED, 2)):
            try:
                entries = datasets.read_regdb_list(root, "test", name, t)
            except datasets.DatasetError as e:
                raise EvaluationError(f"RegDB trial {t}: {e}") from e
            sides[name] = _split([e[0] for e in entries], [e[1] for e in entries],
                                 [cam] * len(entries), modality, f"RegDB trial {t} {name} list")
        query, gallery = ("visible", "thermal") if direction == "v2i" else ("thermal", "visible")
        out.append(Trial(t, sides[query], sides[gallery]))
    return out


# ----------------------------------------------------------------------------- trials




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


def run_trials(trials: Sequence[Trial], features_for: FeatureFn, protocol: str,
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


def _reranked_trial(trial: Trial, q_feats, g_feats, protocol: str, max_rank: int,
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
