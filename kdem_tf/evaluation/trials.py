"""What an evaluation is made of, whatever the dataset: trials, their two sides, the ranking rule.

A dataset (`kdem_tf.datasets`) builds its protocol's trials from these types; the metric
code (`kdem_tf.evaluation.metrics`) scores them under the dataset's `RankingRule`. Numpy only.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

MULTI_SHOT = 10  # gallery images per id and camera in multi-shot draws


class EvaluationError(ValueError):
    """Bad evaluation input (features, protocol files, empty splits). The message says what and where."""


@dataclasses.dataclass(frozen=True)
class RankingRule:
    """How a protocol ranks one query's gallery, and what its CMC counts.

    collapse_ids: the CMC counts distinct ids, each at its first ranked image (AGW's eval_sysu,
        LLCM's eval_llcm); False: the rank of the first matching image (eval_regdb, torchreid).
    drop_same_camera: gallery images of the query's own id and camera are dropped (torchreid's
        eval_market1501, eval_llcm).
    excluded_cameras: ((query camera, (gallery cameras it never searches)), ...), applied after
        sorting (SYSU: a cam3 query skips cam2, the same room).
    """
    name: str
    collapse_ids: bool = False
    drop_same_camera: bool = False
    excluded_cameras: Tuple[Tuple[int, Tuple[int, ...]], ...] = ()

    def kept(self, order: np.ndarray, q_pid: int, q_cam: int, g_pids: np.ndarray,
             g_cams: np.ndarray) -> np.ndarray:
        """One query's ranked gallery indices without those the rule drops."""
        g_pids, g_cams = np.asarray(g_pids), np.asarray(g_cams)
        for camera, excluded in self.excluded_cameras:
            if q_cam == camera:
                order = order[~np.isin(g_cams[order], excluded)]
        if self.drop_same_camera:
            order = order[(g_pids[order] != q_pid) | (g_cams[order] != q_cam)]
        return order

    def pair_mask(self, q_pids, q_cams, g_pids, g_cams) -> np.ndarray:
        """[Q, G] bool: the query-gallery pairs this rule ranks (the others are dropped before scoring)."""
        q_pids, q_cams = np.asarray(q_pids).reshape(-1, 1), np.asarray(q_cams).reshape(-1, 1)
        g_pids, g_cams = np.asarray(g_pids).reshape(1, -1), np.asarray(g_cams).reshape(1, -1)
        mask = np.ones((q_pids.shape[0], g_pids.shape[1]), bool)
        for camera, excluded in self.excluded_cameras:
            mask &= ~((q_cams == camera) & np.isin(g_cams, excluded))
        if self.drop_same_camera:
            mask &= ~((q_pids == g_pids) & (q_cams == g_cams))
        return mask


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """The protocol choices of one evaluation; a dataset reads the ones it has (`Dataset.eval_options`).

    mode: search mode (SYSU: all | indoor). multi_shot: several gallery images per id and camera.
    direction: query → gallery direction (v2i | i2v), None = the dataset's default.
    trials: gallery draws or index splits. sampling: the gallery-sampling scheme, None = the default.
    """
    mode: str = "all"
    multi_shot: bool = False
    direction: Optional[str] = None
    trials: int = 10
    sampling: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class Split:
    """One side of a trial: paths relative to the data root, with [N] ids and cameras."""
    paths: Tuple[str, ...]
    pids: np.ndarray
    cams: np.ndarray
    modality: str  # "visible" or "infrared"; a side that mixes them: "visible+infrared"
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


def make_split(paths: Sequence[str], pids: Sequence[int], cams: Sequence[int], modality: str,
               what: str) -> Split:
    """A trial side; `what` names it in the error when the protocol selected no image."""
    if not paths:
        raise EvaluationError(f"empty {what}: the protocol selected no images")
    return Split(tuple(paths), np.asarray(pids, np.int64), np.asarray(cams, np.int64), modality)


def mixed_split(paths: Sequence[str], pids: Sequence[int], cams: Sequence[int], modalities: Sequence[str],
                vocabulary: Sequence[str], what: str) -> Split:
    """A side whose images may mix modalities: `modality` names those present ("visible+infrared"),
    each path keeps its own when there are several."""
    modalities = tuple(modalities)
    present = [m for m in vocabulary if m in modalities]
    split = make_split(paths, pids, cams, "+".join(present), what)
    return split if len(present) < 2 else dataclasses.replace(split, modalities=modalities)
