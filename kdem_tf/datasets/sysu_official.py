"""The official SYSU-MM01 gallery sampling: `exp/rand_perm_cam.mat` of the dataset's MATLAB evaluation.

The dataset (github.com/wuancong/SYSU-MM01, evaluation/) ships a fixed permutation of each
person's images per camera and trial; its MATLAB `get_testing_set.m` draws trial t's gallery
as, for each gallery camera of the mode (outer loop) and each test id ascending (inner loop),
the first `number_shot` (1 single-shot, 10 multi-shot) entries of row t of that permutation,
skipping ids whose permutation is empty. MPANet, IDKL and others read the same file from
Python as `loadmat(...)["rand_perm_cam"][cam - 1][0].squeeze()[pid - 1][trial][:shots]`.

File structure (MATLAB): `rand_perm_cam` is a 6 x 1 cell, one per camera; entry `{cam}` is
a cell with one entry per person id (1-based, index = id); entry `{cam}{id}` is a
[trials, n] matrix of 1-based image positions (the permutation of that person's n images
in that camera, one row per trial), or empty when the person has no image there. Position p
is the p-th image file of `camC/PPPP/` sorted by name (the order of the MATLAB feature files;
on SYSU-MM01 the files are 0001.jpg.. so this is the file named p, as MPANet looks it up).
Trials scored with these galleries use the same metric code as AGW's sampling
(kdem_tf.evaluation): only which gallery images are drawn changes.
"""
from __future__ import annotations

import io
from typing import Callable, List, Sequence

import numpy as np

from kdem_tf.evaluation.trials import EvaluationError

RAND_PERM_CAM = "exp/rand_perm_cam.mat"
NUM_CAMERAS = 6
EXPECTED = ("a MATLAB file with a 6 x 1 cell 'rand_perm_cam' (one cell per camera, one entry per person id, "
            "each a [trials, images] matrix of 1-based image positions or empty)")


def read_rand_perm_cam(data: bytes, source: str) -> List[List[np.ndarray]]:
    """[camera 0..5][person id - 1] -> int64 [trials, n] positions (1-based); [0, 0] when empty."""
    from scipy.io import loadmat  # in the lock (constraints.txt); only this protocol needs it

    try:
        content = loadmat(io.BytesIO(data))
    except Exception as e:  # scipy raises several types for a damaged or non-MATLAB file
        raise EvaluationError(f"{source}: not a readable MATLAB .mat file ({e}); expected {EXPECTED}") from None
    if "rand_perm_cam" not in content:
        raise EvaluationError(f"{source}: no variable 'rand_perm_cam' (found "
                                    f"{sorted(k for k in content if not k.startswith('__'))}); expected {EXPECTED}")
    cells = np.asarray(content["rand_perm_cam"])
    if cells.dtype != object or cells.size != NUM_CAMERAS:
        raise EvaluationError(f"{source}: 'rand_perm_cam' is {cells.dtype} of shape {cells.shape}, "
                                    f"expected {EXPECTED}")
    cameras = []
    for cam, cell in enumerate(cells.reshape(-1), start=1):
        persons = np.asarray(cell)
        if persons.dtype != object:
            raise EvaluationError(f"{source}: 'rand_perm_cam' camera {cam} is {persons.dtype} of shape "
                                        f"{persons.shape}, not a cell of persons; expected {EXPECTED}")
        cameras.append([_permutation(entry, source, cam, pid) for pid, entry in enumerate(persons.reshape(-1), 1)])
    return cameras


def _permutation(entry, source: str, cam: int, pid: int) -> np.ndarray:
    rows = np.asarray(entry)
    if rows.size == 0:
        return np.zeros((0, 0), np.int64)
    if rows.ndim != 2 or not np.issubdtype(rows.dtype, np.number) or not np.all(rows == np.round(rows)) \
            or rows.min() < 1:
        raise EvaluationError(f"{source}: camera {cam}, person {pid}: expected a [trials, images] matrix of "
                                    f"1-based image positions, got {rows.dtype} of shape {rows.shape}")
    return rows.astype(np.int64)


def official_gallery_paths(perm: Sequence[Sequence[np.ndarray]], source: str, ids: Sequence[int],
                           cameras: Sequence[int], trial: int, shots: int,
                           image_files: Callable[[int, int], List[str]]) -> List[str]:
    """Relative paths "camC/PPPP/name" of trial `trial` (0-based row), as get_testing_set.m draws them.

    image_files(camera, pid) lists the sorted image names of that folder.
    """
    paths = []
    for cam in cameras:
        persons = perm[cam - 1]
        for pid in sorted(ids):
            if pid > len(persons):
                raise EvaluationError(f"{source}: camera {cam} lists {len(persons)} persons; test id {pid} "
                                            f"has no permutation")
            rows = persons[pid - 1]
            if rows.size == 0:
                continue
            if trial >= len(rows):
                raise EvaluationError(f"{source}: camera {cam}, person {pid}: {len(rows)} trials, "
                                            f"trial {trial + 1} asked")
            files = image_files(cam, pid)
            chosen = rows[trial, :shots]
            if chosen.max() > len(files):
                raise EvaluationError(f"{source}: camera {cam}, person {pid}, trial {trial + 1}: image position "
                                            f"{int(chosen.max())}, but cam{cam}/{pid:04d}/ holds {len(files)} images")
            paths.extend(f"cam{cam}/{pid:04d}/{files[p - 1]}" for p in chosen)
    return paths


def read_official_permutation(root: str):
    """(permutations, file name) of ROOT/exp/rand_perm_cam.mat (see `read_rand_perm_cam`)."""
    import tensorflow as tf  # tf.io.gfile, as the dataset readers: gs:// roots work too

    path = f"{root.rstrip('/')}/{RAND_PERM_CAM}"
    if not tf.io.gfile.exists(path):
        raise EvaluationError(f"{path}: not found; --gallery-sampling official needs the rand_perm_cam.mat of "
                                 f"the dataset's MATLAB evaluation (SYSU-MM01 evaluation/data_split/) in exp/: "
                                 f"{EXPECTED}")
    with tf.io.gfile.GFile(path, "rb") as f:
        return read_rand_perm_cam(f.read(), path), path
