"""Readers for SYSU-MM01 and RegDB in their published on-disk layouts.

The same code reads the real datasets and the synthetic stand-in
(`kdem_tf.data.synthetic`), which writes exactly these layouts.

SYSU-MM01::

    ROOT/cam1..cam6/PPPP/NNNN.jpg      cams 1, 2, 4, 5 visible; 3, 6 infrared
    ROOT/exp/train_id.txt              one line: comma-separated ids
    ROOT/exp/val_id.txt
    ROOT/exp/test_id.txt

RegDB::

    ROOT/Visible/..., ROOT/Thermal/...
    ROOT/idx/{train,test}_{visible,thermal}_{trial}.txt   lines "relative/path label"

Paths are read with `tf.io.gfile`, so `gs://` and HDFS roots work where TF has
those filesystems. Every error names the file (and line) at fault.
"""
from __future__ import annotations

import dataclasses
import posixpath
from typing import Dict, Iterable, List, Sequence, Tuple

import tensorflow as tf

from kdem_tf.image_contract import INFRARED, VISIBLE

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SYSU_VISIBLE_CAMERAS = (1, 2, 4, 5)
SYSU_INFRARED_CAMERAS = (3, 6)
SYSU_INDOOR_VISIBLE_CAMERAS = (1, 2)
REGDB_TRIALS = tuple(range(1, 11))
REGDB_VISIBLE_CAMERA = 1
REGDB_THERMAL_CAMERA = 2


class DatasetError(ValueError):
    """A dataset folder or split file is missing or malformed. The message names the file."""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image of a dataset.

    Args:
        path: path relative to the data root, '/'-separated (e.g. "cam3/0001/0001.jpg").
        person_id: the dataset's identity number.
        label: contiguous training label from 0, or -1 outside training.
        camera: camera number.
        modality: "visible" or "infrared".
    """
    path: str
    person_id: int
    label: int
    camera: int
    modality: str


def join(root: str, relative: str) -> str:
    return posixpath.join(root.rstrip("/"), relative) if "://" in root else \
        posixpath.join(root, relative)


def _require_dir(path: str, what: str) -> None:
    if not tf.io.gfile.isdir(path):
        raise DatasetError(f"{path}: missing {what} folder")


def _read_lines(path: str) -> List[str]:
    if not tf.io.gfile.exists(path):
        raise DatasetError(f"{path}: missing split file")
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read().splitlines()


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


# ----------------------------------------------------------------------------- SYSU-MM01


def sysu_camera_modality(camera: int) -> str:
    return INFRARED if camera in SYSU_INFRARED_CAMERAS else VISIBLE


def read_sysu_ids(root: str, which: str) -> List[int]:
    """Reads `exp/{which}_id.txt` (which: train, val or test): one comma-separated line."""
    path = join(root, f"exp/{which}_id.txt")
    lines = [line for line in _read_lines(path) if line.strip()]
    if len(lines) != 1:
        raise DatasetError(f"{path}: expected one line of comma-separated ids, found {len(lines)} lines")
    ids = []
    for token in lines[0].split(","):
        token = token.strip()
        if not token:
            continue
        if not token.isdigit():
            raise DatasetError(f"{path}:1: malformed id {token!r} (expected an integer)")
        ids.append(int(token))
    if not ids:
        raise DatasetError(f"{path}:1: no ids")
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}:1: duplicate ids")
    return ids


def sysu_image_files(root: str, camera: int, person_id: int) -> List[str]:
    """Sorted image file names of one id under one camera ([] when the folder is absent).

    Sorted by name, as the SYSU gallery-sampling protocol lists them.
    """
    folder = join(root, f"cam{camera}/{person_id:04d}")
    if not tf.io.gfile.isdir(folder):
        return []
    return sorted(name for name in tf.io.gfile.listdir(folder) if _is_image(name))


def _sysu_records(root: str, ids: Sequence[int], cameras: Sequence[int], labelled: bool,
                  id_file: str) -> List[ImageRecord]:
    for camera in range(1, 7):
        _require_dir(join(root, f"cam{camera}"), f"SYSU-MM01 camera cam{camera}")
    label_of = {pid: i for i, pid in enumerate(sorted(ids))}
    records = []
    for pid in sorted(ids):
        found = 0
        for camera in cameras:
            for name in sysu_image_files(root, camera, pid):
                records.append(ImageRecord(
                    path=f"cam{camera}/{pid:04d}/{name}", person_id=pid,
                    label=label_of[pid] if labelled else -1, camera=camera,
                    modality=sysu_camera_modality(camera)))
                found += 1
        if not found:
            raise DatasetError(f"{id_file}: id {pid} is listed but has no images under "
                               f"{', '.join(f'cam{c}/{pid:04d}' for c in cameras)}")
    return records


def sysu_train_records(root: str) -> List[ImageRecord]:
    """Training images: all six cameras of train ∪ val ids, labels contiguous over sorted ids."""
    ids = read_sysu_ids(root, "train") + read_sysu_ids(root, "val")
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{join(root, 'exp/val_id.txt')}: shares ids with train_id.txt")
    return _sysu_records(root, ids, range(1, 7), labelled=True,
                         id_file=join(root, "exp/train_id.txt") + " or val_id.txt")


def sysu_test_records(root: str) -> Tuple[List[ImageRecord], List[ImageRecord]]:
    """The test pools: (query = every infrared image, gallery = every visible image) of test ids.

    The per-trial single-shot gallery is sampled from the gallery pool by
    `kdem_tf.evaluation`; the pool holds every candidate.
    """
    ids = read_sysu_ids(root, "test")
    records = _sysu_records(root, ids, range(1, 7), labelled=False,
                            id_file=join(root, "exp/test_id.txt"))
    query = [r for r in records if r.modality == INFRARED]
    gallery = [r for r in records if r.modality == VISIBLE]
    return query, gallery


# ----------------------------------------------------------------------------- RegDB


def regdb_person_id(path: str, label: int, offset: int) -> int:
    """RegDB's identity number: the numeric folder in `Visible/<n>/...`, else label + offset."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[1].isdigit():
        return int(parts[1])
    return label + offset


def read_regdb_list(root: str, split: str, modality_name: str, trial: int) -> List[Tuple[str, int, int]]:
    """Reads `idx/{split}_{modality_name}_{trial}.txt` → [(relative_path, label, line_number)]."""
    if trial not in REGDB_TRIALS:
        raise DatasetError(f"RegDB trial must be 1..10, got {trial}")
    path = join(root, f"idx/{split}_{modality_name}_{trial}.txt")
    entries = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetError(f"{path}:{number}: malformed line {line!r} (expected 'relative/path label')")
        entries.append((fields[0].replace("\\", "/"), int(fields[1]), number))
    if not entries:
        raise DatasetError(f"{path}: no entries")
    return entries


def regdb_records(root: str, split: str, trial: int, check_files: bool = True) -> Dict[str, List[ImageRecord]]:
    """Images of one RegDB split ("train" or "test") of one trial, by modality.

    Train labels must be contiguous from 0 (as the published index files are);
    test records keep the file's label as their identity label for evaluation
    (`label` is -1: they are not training labels).
    """
    if split not in ("train", "test"):
        raise DatasetError(f"RegDB split must be 'train' or 'test', got {split!r}")
    _require_dir(join(root, "Visible"), "RegDB Visible")
    _require_dir(join(root, "Thermal"), "RegDB Thermal")
    out = {}
    offset = 0 if split == "train" else 100000  # keeps fallback ids of train and test apart
    for modality, name, camera in ((VISIBLE, "visible", REGDB_VISIBLE_CAMERA),
                                   (INFRARED, "thermal", REGDB_THERMAL_CAMERA)):
        list_path = join(root, f"idx/{split}_{name}_{trial}.txt")
        records = []
        for rel, label, number in read_regdb_list(root, split, name, trial):
            if check_files and not tf.io.gfile.exists(join(root, rel)):
                raise DatasetError(f"{list_path}:{number}: listed image {rel} does not exist")
            records.append(ImageRecord(path=rel, person_id=regdb_person_id(rel, label, offset),
                                       label=label if split == "train" else -1,
                                       camera=camera, modality=modality))
        out[modality] = records
    if split == "train":
        labels = sorted({r.label for rs in out.values() for r in rs})
        if labels != list(range(len(labels))):
            raise DatasetError(f"{join(root, f'idx/train_visible_{trial}.txt')}: train labels must be "
                               f"contiguous from 0, got {labels[:5]}...{labels[-3:]}")
    return out


def regdb_test_labels(root: str, trial: int) -> Dict[str, int]:
    """Path → identity label of the trial's test lists (the labels the protocol matches on)."""
    labels = {}
    for name in ("visible", "thermal"):
        for rel, label, _ in read_regdb_list(root, "test", name, trial):
            labels[rel] = label
    return labels


def identities(records: Iterable[ImageRecord]) -> set:
    return {r.person_id for r in records}
