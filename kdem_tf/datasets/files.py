"""What every dataset reader shares: the image record, the error, and file access that names the file.

Paths are read with `tf.io.gfile` (imported on first use, so the registry loads without
TensorFlow), so `gs://` and HDFS roots work where TF has those filesystems. Identities and
cameras are read from folder structure or list files, never from string positions; every
error names the file (and line) at fault.
"""
from __future__ import annotations

import dataclasses
import posixpath
from typing import Iterable, List, Tuple

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


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


def gfile():
    """TensorFlow's file API (`tf.io.gfile`)."""
    import tensorflow as tf

    return tf.io.gfile


def join(root: str, relative: str) -> str:
    return posixpath.join(root.rstrip("/"), relative) if "://" in root else \
        posixpath.join(root, relative)


def require_dir(path: str, what: str) -> None:
    if not gfile().isdir(path):
        raise DatasetError(f"{path}: missing {what} folder")


def read_lines(path: str) -> List[str]:
    if not gfile().exists(path):
        raise DatasetError(f"{path}: missing split file")
    with gfile().GFile(path, "r") as f:
        return f.read().splitlines()


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def image_files(folder: str) -> List[str]:
    """Sorted image file names in a folder ([] when the folder is absent)."""
    if not gfile().isdir(folder):
        return []
    return sorted(name.rstrip("/") for name in gfile().listdir(folder) if is_image(name))


def read_id_line(path: str) -> List[int]:
    """Reads a file of one line of comma-separated integer ids (SYSU exp/*_id.txt, LLCM idx/test_id.txt)."""
    lines = [line for line in read_lines(path) if line.strip()]
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


def read_path_label_list(path: str) -> List[Tuple[str, int, int]]:
    """`relative/path label` lines (RegDB's and LLCM's index files) → [(path, label, line number)]."""
    entries = []
    for number, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetError(f"{path}:{number}: malformed line {line!r} (expected 'relative/path label')")
        entries.append((fields[0].replace("\\", "/"), int(fields[1]), number))
    return entries


def camera_folder_parts(path: str, where: str, depth: int) -> Tuple[str, int, int]:
    """(top folder or "", camera C, person id P) of a path ending in "camC/PPPP/file", read from its
    folders; `depth` = the number of parts the path must have (3: camC/PPPP/file, 4: TOP/camC/PPPP/file).
    `where` (file and line, or the split) is named when the path does not have that structure."""
    parts = path.split("/")
    if len(parts) != depth or not parts[-3].startswith("cam") or not parts[-3][3:].isdigit() \
            or not parts[-2].isdigit():
        shape = "/".join((["FOLDER"] if depth == 4 else []) + ["camC", "PPPP", "file"])
        raise DatasetError(f"{where}: path {path!r} is not {shape} (camera C and id PPPP numbers)")
    return (parts[0] if depth == 4 else ""), int(parts[-3][3:]), int(parts[-2])


def identities(records: Iterable[ImageRecord]) -> set:
    return {r.person_id for r in records}
