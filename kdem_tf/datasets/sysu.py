"""SYSU-MM01 (Wu et al., ICCV 2017): reader, cameras, splits, AGW's protocol, synthetic stand-in.

Layout::

    ROOT/cam1..cam6/PPPP/NNNN.jpg      cams 1, 2, 4, 5 visible; 3, 6 infrared
    ROOT/exp/train_id.txt              one line: comma-separated ids
    ROOT/exp/val_id.txt
    ROOT/exp/test_id.txt
    ROOT/exp/rand_perm_cam.mat         (optional) the official gallery sampling (sysu_official)

Splits written by preprocessing: `train` (train ∪ val ids, all cameras), `query` (the infrared
test pool) and `gallery` (the visible test pool), from which each trial draws its gallery.
Protocol: AGW's eval_sysu (ids collapsed in the CMC; a cam3 query never searches cam2, the same
room), `all` (gallery cams 1, 2, 4, 5) or `indoor` (1, 2) search, single- or multi-shot, AGW's
seeded draw (`agw`) or the dataset's own permutation file (`official`).
"""
from __future__ import annotations

import os
import random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from kdem_tf.data import synthetic_people as synthetic
from kdem_tf.datasets import base, files, register, sysu_official
from kdem_tf.datasets.files import DatasetError, ImageRecord, join
from kdem_tf.evaluation import metrics
from kdem_tf.evaluation.trials import (MULTI_SHOT, EvalOptions, EvaluationError, RankingRule, Split, Trial,
                                       make_split)
from kdem_tf.image_contract import INFRARED, VISIBLE

NAME = "sysu"
CAMERAS = (1, 2, 3, 4, 5, 6)
VISIBLE_CAMERAS = (1, 2, 4, 5)
INFRARED_CAMERAS = (3, 6)
GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
QUERY_CAMERAS = INFRARED_CAMERAS
SAMPLINGS = ("agw", "official")
RANKING = RankingRule(NAME, collapse_ids=True, excluded_cameras=((3, (2,)),))
SYNTHETIC_LAYOUT = 0  # the synthetic renderer's layout key: SYSU's people differ from the others'


def camera_modality(camera: int) -> str:
    return INFRARED if camera in INFRARED_CAMERAS else VISIBLE


def path_camera_and_id(path: str) -> Tuple[int, int]:
    """(camera, person id) of "camC/PPPP/name": the camera comes from the path, as in AGW."""
    _, camera, pid = files.camera_folder_parts(path, "SYSU-MM01", 3)
    return camera, pid


# ----------------------------------------------------------------------------- reader


def read_ids(root: str, which: str) -> List[int]:
    """Reads `exp/{which}_id.txt` (which: train, val or test): one comma-separated line."""
    return files.read_id_line(join(root, f"exp/{which}_id.txt"))


def image_files(root: str, camera: int, person_id: int) -> List[str]:
    """Sorted image file names of one id under one camera ([] when the folder is absent), as the
    gallery-sampling protocol lists them."""
    return files.image_files(join(root, f"cam{camera}/{person_id:04d}"))


def _records(root: str, ids: Sequence[int], labelled: bool, id_file: str) -> List[ImageRecord]:
    for camera in CAMERAS:
        files.require_dir(join(root, f"cam{camera}"), f"SYSU-MM01 camera cam{camera}")
    label_of = {pid: i for i, pid in enumerate(sorted(ids))}
    records = []
    for pid in sorted(ids):
        found = 0
        for camera in CAMERAS:
            for name in image_files(root, camera, pid):
                records.append(ImageRecord(path=f"cam{camera}/{pid:04d}/{name}", person_id=pid,
                                           label=label_of[pid] if labelled else -1, camera=camera,
                                           modality=camera_modality(camera)))
                found += 1
        if not found:
            raise DatasetError(f"{id_file}: id {pid} is listed but has no images under "
                               f"{', '.join(f'cam{c}/{pid:04d}' for c in CAMERAS)}")
    return records


def train_records(root: str) -> List[ImageRecord]:
    """Training images: all six cameras of train ∪ val ids, labels contiguous over sorted ids."""
    ids = read_ids(root, "train") + read_ids(root, "val")
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{join(root, 'exp/val_id.txt')}: shares ids with train_id.txt")
    return _records(root, ids, labelled=True, id_file=join(root, "exp/train_id.txt") + " or val_id.txt")


def test_records(root: str) -> Tuple[List[ImageRecord], List[ImageRecord]]:
    """The test pools: (query = every infrared image, gallery = every visible image) of test ids."""
    records = _records(root, read_ids(root, "test"), labelled=False, id_file=join(root, "exp/test_id.txt"))
    return ([r for r in records if r.modality == INFRARED], [r for r in records if r.modality == VISIBLE])


# ----------------------------------------------------------------------------- protocol


def _side(paths: Sequence[str], modality: str, what: str) -> Split:
    cams, pids = zip(*(path_camera_and_id(p) for p in paths)) if paths else ((), ())
    return make_split(paths, pids, cams, modality, what)


def query(root: str) -> Split:
    """Every infrared test image, ordered as AGW's process_query_sysu (same for all/indoor):
    test ids ascending, then cam3 before cam6, then sorted file names."""
    try:
        pool, _ = test_records(root)
    except DatasetError as e:
        raise EvaluationError(str(e)) from e
    return _side([r.path for r in pool], INFRARED, "SYSU query (no cam3/cam6 images of test ids)")


def draw_gallery(ids: Sequence[int], files_of: Callable[[int, int], List[str]], mode: str = "all",
                 trial: int = 0, multi_shot: bool = False) -> Split:
    """The gallery of one trial, drawn exactly as AGW's process_gallery_sysu(mode, trial), whatever
    lists the files (`files_of(camera, pid)`: sorted names; the raw folder or a preprocessed split).

    `random.seed(trial)`, then for each test id ascending, for each visible camera of the mode in
    order, when that id has images there: `random.choice(sorted files)`. Multi-shot (not in AGW):
    `random.sample(sorted files, min(10, n))` in the same loop.
    """
    if mode not in GALLERY_CAMERAS:
        raise EvaluationError(f"SYSU mode must be 'all' or 'indoor', got {mode!r}")
    rng = random.Random(trial)  # same stream as random.seed(trial) + random.choice
    paths = []
    for pid in sorted(ids):
        for cam in GALLERY_CAMERAS[mode]:
            names = files_of(cam, pid)
            if not names:
                continue
            chosen = rng.sample(names, min(MULTI_SHOT, len(names))) if multi_shot else [rng.choice(names)]
            paths.extend(f"cam{cam}/{pid:04d}/{name}" for name in chosen)
    return _side(paths, VISIBLE, f"SYSU gallery (trial {trial}, mode {mode})")


def gallery(root: str, mode: str = "all", trial: int = 0, multi_shot: bool = False) -> Split:
    """The gallery of one trial drawn from the raw folder (`draw_gallery`)."""
    if mode not in GALLERY_CAMERAS:
        raise EvaluationError(f"SYSU mode must be 'all' or 'indoor', got {mode!r}")
    try:
        ids = sorted(read_ids(root, "test"))
    except DatasetError as e:
        raise EvaluationError(str(e)) from e
    return draw_gallery(ids, lambda cam, pid: image_files(root, cam, pid), mode, trial, multi_shot)


def trials(root: str, mode: str = "all", trials: int = 10, multi_shot: bool = False,
           sampling: str = "agw") -> List[Trial]:
    """Trials 0..trials-1: one infrared query set, one visible gallery draw per trial.

    sampling: "agw" (AGW's seeded draw, `gallery`) or "official" (exp/rand_perm_cam.mat)."""
    if sampling not in SAMPLINGS:
        raise EvaluationError(f"gallery sampling must be one of {SAMPLINGS}, got {sampling!r}")
    queries = query(root)
    if sampling == "official":
        perm, source = sysu_official.read_official_permutation(root)
        return [Trial(t, queries, official_gallery(root, mode, t, multi_shot, perm, source)) for t in range(trials)]
    return [Trial(t, queries, gallery(root, mode, t, multi_shot)) for t in range(trials)]


def official_gallery(root: str, mode: str, trial: int, multi_shot: bool, perm, source: str) -> Split:
    """The gallery of trial `trial` (0-based; MATLAB's run_time = trial + 1) under the official sampling."""
    if mode not in GALLERY_CAMERAS:
        raise EvaluationError(f"SYSU mode must be 'all' or 'indoor', got {mode!r}")
    try:
        ids = read_ids(root, "test")
    except DatasetError as e:
        raise EvaluationError(str(e)) from e
    paths = sysu_official.official_gallery_paths(perm, source, ids, GALLERY_CAMERAS[mode], trial,
                                                 MULTI_SHOT if multi_shot else 1,
                                                 lambda cam, pid: image_files(root, cam, pid))
    if not paths:
        raise EvaluationError(f"empty SYSU official gallery (trial {trial}, mode {mode}): {source} selects no image")
    return _side(paths, VISIBLE, f"SYSU official gallery (trial {trial}, mode {mode})")


def trials_from_paths(query_paths: Sequence[str], gallery_paths: Sequence[str], mode: str = "all",
                      trials: int = 10, multi_shot: bool = False) -> List[Trial]:
    """Trials from the query and gallery pools of a preprocessed dataset (their "camC/PPPP/name"
    paths): the same query order and gallery draws as `trials` on the raw folder."""
    by_folder: Dict[Tuple[int, int], List[str]] = {}
    for path in gallery_paths:
        by_folder.setdefault(path_camera_and_id(path), []).append(path.split("/")[2])
    for names in by_folder.values():
        names.sort()
    keys = {p: (path_camera_and_id(p)[1], path_camera_and_id(p)[0], p.split("/")[2]) for p in query_paths}
    ordered = sorted(query_paths, key=keys.get)  # AGW's order: id, then camera, then file name
    queries = _side(ordered, INFRARED, "SYSU query split")
    ids = sorted({pid for _, pid in by_folder} | set(int(p) for p in queries.pids))
    return [Trial(t, queries, draw_gallery(ids, lambda cam, pid: by_folder.get((cam, pid), []), mode, t,
                                           multi_shot)) for t in range(trials)]


def eval_sysu(distmat, q_pids, g_pids, q_camids, g_camids, max_rank: int = 20):
    """AGW's eval_sysu: (cmc [max_rank] float32, mAP, mINP)."""
    return metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, protocol=RANKING)


# ----------------------------------------------------------------------------- synthetic stand-in


def synthetic_split(identities: int, seed: int) -> Dict[str, List[int]]:
    """About 60/15/25 % train/val/test ids (1-based), at least 1 each and 2 train/test when N >= 6."""
    if identities < 3:
        raise ValueError(f"SYSU layout needs at least 3 identities (train, val, test), got {identities}")
    least = 2 if identities >= 6 else 1
    n_test = max(least, round(0.25 * identities))
    n_val = max(1, min(round(0.15 * identities), identities - n_test - least))
    ids = synthetic.random_stream(seed, SYNTHETIC_LAYOUT, synthetic.SPLIT_STREAM).permutation(np.arange(1, identities + 1)).tolist()
    cut = n_test + n_val
    return {"test": sorted(ids[:n_test]), "val": sorted(ids[n_test:cut]), "train": sorted(ids[cut:])}


def synthetic_cameras(seed: int, pid: int, test: bool) -> List[int]:
    """The cameras an id appears in: most, not always all, with the protocol's minimum guaranteed."""
    rng = synthetic.random_stream(seed, SYNTHETIC_LAYOUT, synthetic.COVER_STREAM, pid)
    cams = {c for c in CAMERAS if rng.random() < 0.75}
    if not cams & set(INFRARED_CAMERAS):
        cams.add(int(rng.choice(INFRARED_CAMERAS)))
    need = (1, 2) if test else VISIBLE_CAMERAS  # indoor search needs cam1/cam2 for test ids
    if not cams & set(need):
        cams.add(int(rng.choice(need)))
    return sorted(cams)


def generate_synthetic(out: str, identities: int = 24, seed: int = 0, image_size=(64, 32),
                       images_per_camera: int = 4, overwrite: bool = False, progress: bool = True,
                       workers: Optional[int] = None) -> str:
    """Writes a SYSU-MM01-layout dataset; returns its absolute path.

    Args:
        out: target folder (must be absent or empty unless overwrite).
        identities: number of ids (>= 3), numbered from 1.
        seed: non-negative seed; the same seed gives byte-identical files.
        image_size: (height, width).
        images_per_camera: images per id per camera it appears in.
        workers: rendering processes for large sets (default one per core; the files do not depend on it).
    """
    synthetic.check_settings(seed, image_size, images_per_camera)
    split = synthetic_split(identities, seed)
    test = set(split["test"])
    plan = [(pid, cam, i) for pid in range(1, identities + 1) for cam in synthetic_cameras(seed, pid, pid in test)
            for i in range(1, images_per_camera + 1)]

    def write(root: str) -> None:
        for folder in [f"cam{cam}" for cam in CAMERAS] + ["exp"]:
            os.makedirs(os.path.join(root, folder))  # every camera folder, even one an id misses
        for which, ids in split.items():
            with open(os.path.join(root, f"exp/{which}_id.txt"), "w") as f:
                f.write(",".join(str(i) for i in ids) + "\n")
        bar = synthetic.progress_bar(len(plan), NAME, progress)
        synthetic.render_all([((seed, SYNTHETIC_LAYOUT, pid, cam, (cam, i), cam in INFRARED_CAMERAS, image_size), {},
                               os.path.join(root, f"cam{cam}/{pid:04d}/{i:04d}.jpg")) for pid, cam, i in plan],
                             bar, workers)
        bar.close()

    return synthetic.write_atomically(out, overwrite, write)


def montage_rows(root: str, rows: int) -> List[List[str]]:
    """The synthetic montage's cells: one row per id, one image per camera."""
    return [[os.path.join(root, f"cam{c}/{pid:04d}/0001.jpg") for c in CAMERAS] for pid in range(1, rows + 1)]


# ----------------------------------------------------------------------------- the plug-in


class Sysu(base.Dataset):
    name = NAME
    title = "SYSU-MM01"
    data_root_help = "ROOT/cam1..cam6/PPPP/*.jpg and ROOT/exp/{train,val,test}_id.txt"
    splits = (base.SplitSpec(base.TRAIN), base.SplitSpec("query", INFRARED), base.SplitSpec("gallery", VISIBLE))
    eval_splits = ("query", "gallery")
    ranking = RANKING
    sampling = "agw"
    train_identities = 395  # train ∪ val ids
    eval_options = (
        base.CliOption("--mode", dict(choices=tuple(GALLERY_CAMERAS), default="all",
                                      help="SYSU search mode: all (gallery cams 1, 2, 4, 5) or indoor (1, 2)"), "mode"),
        base.CliOption("--multi-shot", dict(action="store_true",
                                            help="SYSU: 10 gallery images per id and camera"), "multi_shot"),
        base.CliOption("--gallery-sampling", dict(choices=SAMPLINGS, default="agw",
                                                  help="SYSU gallery draw per trial: AGW's seeded random.choice "
                                                       "(default) or the official exp/rand_perm_cam.mat of the "
                                                       "dataset's MATLAB evaluation"), "sampling"),
    )
    synthetic_writer = staticmethod(generate_synthetic)
    synthetic_defaults = {"identities": 24, "images_per_camera": 4}

    def read_splits(self, root, options):
        queries, gallery_pool = test_records(root)
        return {base.TRAIN: train_records(root), "query": queries, "gallery": gallery_pool}

    def trials_from_folder(self, root, options: EvalOptions):
        return trials(root, options.mode, options.trials, options.multi_shot, self.sampling_label(options))

    def trials_from_records(self, sides, options: EvalOptions, settings, where):
        if self.sampling_label(options) != self.sampling:
            raise EvaluationError("--gallery-sampling official reads exp/rand_perm_cam.mat of the raw folder: "
                                  "use --data-root")
        return trials_from_paths(list(sides[0].paths), list(sides[1].paths), options.mode, options.trials,
                                 options.multi_shot)

    def describe(self, options, source):
        shot = "multi-shot" if options.multi_shot else "single-shot"
        return f"SYSU-MM01 {options.mode}-search {shot}, {self.sampling_label(options)} gallery sampling"

    def eval_settings(self, options):
        return {"mode": options.mode, "multi_shot": options.multi_shot}


    def montage(self, root, rows):
        return montage_rows(root, rows)


register(Sysu())
