"""Readers for SYSU-MM01, RegDB and LLCM in their published on-disk layouts.

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

LLCM (Zhang & Wang, CVPR 2023; the authors' ZYK100/LLCM DEEN code)::

    ROOT/{train_vis,train_nir,test_vis,test_nir}/camC/PPPP/*.jpg
    ROOT/idx/train_vis.txt, ROOT/idx/train_nir.txt   lines "relative/path label"
    ROOT/idx/test_id.txt                              one line: comma-separated ids

Identities and cameras are read from the folder structure (`camC/PPPP`), never
from string positions.

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
# The camera folders the LLCM authors' process_query_llcm / process_gallery_llcm read:
# test_vis cam1..cam9, test_nir the same without cam3.
LLCM_VISIBLE_CAMERAS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
LLCM_INFRARED_CAMERAS = (1, 2, 4, 5, 6, 7, 8, 9)
LLCM_FOLDERS = {("train", VISIBLE): "train_vis", ("train", INFRARED): "train_nir",
                ("test", VISIBLE): "test_vis", ("test", INFRARED): "test_nir"}


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
    return read_id_line(join(root, f"exp/{which}_id.txt"))


def read_id_line(path: str) -> List[int]:
    """Reads a file of one line of comma-separated integer ids (SYSU exp/*_id.txt, LLCM idx/test_id.txt)."""
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
    entries = _read_path_label_list(path)
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


# ----------------------------------------------------------------------------- LLCM


def llcm_path_parts(path: str, where: str) -> Tuple[str, int, int]:
    """(top folder, camera, person id) of "FOLDER/camC/PPPP/name", from its folders.

    `where` (file and line) is named when the path does not have that structure.
    """
    parts = path.split("/")
    if len(parts) != 4 or not parts[1].startswith("cam") or not parts[1][3:].isdigit() \
            or not parts[2].isdigit():
        raise DatasetError(f"{where}: path {path!r} is not FOLDER/camC/PPPP/file (camera C and id PPPP "
                           f"numbers)")
    return parts[0], int(parts[1][3:]), int(parts[2])


def llcm_train_records(root: str, check_files: bool = True) -> List[ImageRecord]:
    """Training images of idx/train_vis.txt and idx/train_nir.txt, with the files' labels.

    Each line is "relative/path label"; the path must lie under the list's folder
    (train_vis/ or train_nir/). Labels must be contiguous from 0 over both lists and
    name one identity each.
    """
    records, label_pid, first_list = [], {}, None
    for modality in (VISIBLE, INFRARED):
        folder = LLCM_FOLDERS[("train", modality)]
        list_path = join(root, f"idx/{folder}.txt")
        first_list = first_list or list_path
        for rel, label, number in _read_path_label_list(list_path):
            where = f"{list_path}:{number}"
            top, camera, pid = llcm_path_parts(rel, where)
            if top != folder:
                raise DatasetError(f"{where}: path {rel!r} is not under {folder}/")
            if label < 0 or label_pid.setdefault(label, pid) != pid:
                raise DatasetError(f"{where}: label {label} of id {pid} is negative or already names "
                                   f"id {label_pid.get(label)}")
            if check_files and not tf.io.gfile.exists(join(root, rel)):
                raise DatasetError(f"{where}: listed image {rel} does not exist")
            records.append(ImageRecord(rel, pid, label, camera, modality))
    if not records:
        raise DatasetError(f"{first_list}: no entries")
    labels = sorted(label_pid)
    if labels != list(range(len(labels))):
        raise DatasetError(f"{first_list} and train_nir.txt: train labels must be contiguous from 0, got "
                           f"{labels[:5]}...{labels[-3:]}")
    pids = [pid for pid in label_pid.values()]
    if len(set(pids)) != len(pids):
        raise DatasetError(f"{first_list} and train_nir.txt: an id carries two labels")
    return records


def _read_path_label_list(path: str) -> List[Tuple[str, int, int]]:
    """`relative/path label` lines (RegDB's and LLCM's index files) → [(path, label, line number)]."""
    entries = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetError(f"{path}:{number}: malformed line {line!r} (expected 'relative/path label')")
        entries.append((fields[0].replace("\\", "/"), int(fields[1]), number))
    return entries


def llcm_image_files(root: str, folder: str, camera: int, person_id: int) -> List[str]:
    """Sorted image names in FOLDER/camC/PPPP ([] when absent), as the authors list them."""
    path = join(root, f"{folder}/cam{camera}/{person_id:04d}")
    if not tf.io.gfile.isdir(path):
        return []
    return sorted(name.rstrip("/") for name in tf.io.gfile.listdir(path) if _is_image(name))


def llcm_test_ids(root: str) -> List[int]:
    """The ids of idx/test_id.txt, in the authors' order: sorted as zero-padded strings."""
    return sorted(read_id_line(join(root, "idx/test_id.txt")), key=lambda pid: f"{pid:04d}")


def llcm_test_records(root: str) -> Dict[str, List[ImageRecord]]:
    """The test pools {visible: test_vis images, infrared: test_nir images} of the listed ids.

    Order as the authors' process_query_llcm: ids (zero-padded string order), then the
    camera list of the modality (`LLCM_VISIBLE_CAMERAS` / `LLCM_INFRARED_CAMERAS`), then
    sorted file names. A listed id with no image in either pool is an error naming
    idx/test_id.txt.
    """
    id_file = join(root, "idx/test_id.txt")
    for modality in (VISIBLE, INFRARED):
        _require_dir(join(root, LLCM_FOLDERS[("test", modality)]), "LLCM test")
    cameras = {VISIBLE: LLCM_VISIBLE_CAMERAS, INFRARED: LLCM_INFRARED_CAMERAS}
    out: Dict[str, List[ImageRecord]] = {VISIBLE: [], INFRARED: []}
    for pid in llcm_test_ids(root):
        found = 0
        for modality in (VISIBLE, INFRARED):
            folder = LLCM_FOLDERS[("test", modality)]
            for camera in cameras[modality]:
                for name in llcm_image_files(root, folder, camera, pid):
                    out[modality].append(ImageRecord(f"{folder}/cam{camera}/{pid:04d}/{name}", pid, -1,
                                                     camera, modality))
                    found += 1
        if not found:
            raise DatasetError(f"{id_file}:1: id {pid} is listed but has no images in test_nir/ or "
                               f"test_vis/ (camC/{pid:04d}/)")
    return out


def identities(records: Iterable[ImageRecord]) -> set:
    return {r.person_id for r in records}
