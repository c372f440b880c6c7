"""A CSV manifest for one's own cameras: `path,person_id,camera,modality,split`, one image a line.

    path,person_id,camera,modality,split
    cam_lobby/0007_0001.jpg,7,1,visible,query
    ir_gate/0007_0003.png,7,2,infrared,gallery
    ...

- path: relative to the CSV file's folder ('/'-separated; the file must exist);
- person_id, camera: integers (ids of train and of query/gallery must not overlap);
- modality: `visible` or `infrared` (kdem_tf.image_contract's vocabulary);
- split: `train`, `query` or `gallery`.

Training labels are contiguous from 0 over the sorted train ids; query and gallery
records carry label -1. Every error names the file, the line number and the field.

The protocol: one trial, the `query` lines against the `gallery` lines, scored as torchreid
scores Market-1501 (`eval_market1501`: for each query, gallery images of the same id and the
same camera are dropped; CMC and mAP over the queries that keep a match; mINP too, the AGW
survey's definition). Either side may mix modalities; each image is embedded with its own
line's modality.
"""
from __future__ import annotations

import csv
import io
import posixpath
from typing import Dict, List

from kdem_tf.datasets import base, register
from kdem_tf.datasets.files import DatasetError, ImageRecord, gfile, join
from kdem_tf.evaluation.trials import EvalOptions, EvaluationError, Split, Trial, RankingRule, mixed_split
from kdem_tf.image_contract import MODALITIES, ContractError, modality_index

NAME = "manifest"
COLUMNS = ("path", "person_id", "camera", "modality", "split")
SPLITS = (base.TRAIN, "query", "gallery")
# torchreid's eval_market1501: a query never matches its own id in its own camera; plain CMC
RANKING = RankingRule(NAME, drop_same_camera=True)


def image_root(csv_path: str) -> str:
    """The folder manifest paths are relative to: the CSV file's own folder."""
    return posixpath.dirname(csv_path.replace("\\", "/")) or "."


def _integer(value: str, where: str, field: str) -> int:
    text = value.strip()
    if not text.lstrip("-").isdigit():
        raise DatasetError(f"{where}: field {field!r}: {value!r} is not an integer")
    return int(text)


def _read_rows(csv_path: str) -> List[tuple]:
    """[(line number, {column: value})] of the data rows; checks the header and the column count."""
    if not gfile().exists(csv_path):
        raise DatasetError(f"{csv_path}: manifest file not found")
    with gfile().GFile(csv_path, "r") as f:
        reader = csv.reader(io.StringIO(f.read()))
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{csv_path}:1: empty manifest (expected the header {','.join(COLUMNS)})")
    header = [h.strip().lstrip("\ufeff") for h in rows[0]]  # a spreadsheet's UTF-8 BOM is no column name
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"{csv_path}:1: field {missing[0]!r}: missing column (header must hold "
                           f"{','.join(COLUMNS)}, got {','.join(header)})")
    out = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise DatasetError(f"{csv_path}:{number}: field {header[len(row)]!r}: missing column "
                               f"({len(row)} of {len(header)} values)")
        out.append((number, dict(zip(header, (cell.strip() for cell in row)))))
    if not out:
        raise DatasetError(f"{csv_path}: no image lines after the header")
    return out


def read_manifest(csv_path: str, check_files: bool = True) -> Dict[str, List[ImageRecord]]:
    """{train, query, gallery: [ImageRecord]} of a manifest; paths relative to its folder."""
    root = image_root(csv_path)
    parsed, seen = [], {}
    for number, row in _read_rows(csv_path):
        where = f"{csv_path}:{number}"
        path = row["path"].replace("\\", "/")
        path = path[2:] if path.startswith("./") else path
        if not path:
            raise DatasetError(f"{where}: field 'path': empty")
        if path in seen:
            raise DatasetError(f"{where}: field 'path': {path} already listed on line {seen[path]}")
        seen[path] = number
        pid = _integer(row["person_id"], where, "person_id")
        camera = _integer(row["camera"], where, "camera")
        try:
            modality_index(row["modality"], f"{where}: field 'modality'")
        except ContractError as e:
            raise DatasetError(str(e)) from None
        if row["split"] not in SPLITS:
            raise DatasetError(f"{where}: field 'split': must be one of {list(SPLITS)}, got {row['split']!r}")
        if check_files and not gfile().exists(join(root, path)):
            raise DatasetError(f"{where}: field 'path': {join(root, path)} does not exist")
        parsed.append((number, path, pid, camera, row["modality"], row["split"]))
    train_ids = sorted({p[2] for p in parsed if p[5] == "train"})
    for number, path, pid, _, _, split in parsed:
        if split != "train" and pid in train_ids:
            raise DatasetError(f"{csv_path}:{number}: field 'person_id': id {pid} is in both train and {split}")
    label_of = {pid: label for label, pid in enumerate(train_ids)}
    out: Dict[str, List[ImageRecord]] = {split: [] for split in SPLITS}
    for _, path, pid, camera, modality, split in parsed:
        out[split].append(ImageRecord(path, pid, label_of.get(pid, -1) if split == "train" else -1,
                                      camera, modality))
    return out


# ----------------------------------------------------------------------------- protocol


def side(records, what: str) -> Split:
    """A trial side of manifest records (their own modality each)."""
    return mixed_split([r.path for r in records], [r.person_id for r in records], [r.camera for r in records],
                       [r.modality for r in records], MODALITIES, what)


def trials(csv_path: str) -> List[Trial]:
    """[Trial 0: query lines vs gallery lines]; paths relative to the CSV's folder."""
    try:
        splits = read_manifest(csv_path)
    except DatasetError as e:
        raise EvaluationError(str(e)) from e
    return [Trial(0, side(splits["query"], f"{csv_path}: no 'query' lines"),
                  side(splits["gallery"], f"{csv_path}: no 'gallery' lines"))]


# ----------------------------------------------------------------------------- the plug-in


class Manifest(base.Dataset):
    name = NAME
    title = "manifest"
    data_root_help = "the CSV file (path,person_id,camera,modality,split; paths relative to its folder)"
    splits = tuple(base.SplitSpec(split) for split in SPLITS)  # query and gallery may mix modalities
    eval_splits = ("query", "gallery")
    ranking = RANKING
    sampling = "single"
    max_trials = 10  # one trial whatever is asked (the manifest has one gallery)

    def read_splits(self, root, options):
        return read_manifest(root)

    def image_root(self, root):
        return image_root(root)

    def trials_from_folder(self, root, options: EvalOptions):
        return trials(root)

    def trials_from_records(self, sides, options: EvalOptions, settings, where):
        stored = [[ImageRecord(path, int(pid), -1, int(cam), modality)
                   for path, pid, cam, modality in zip(a.paths, a.person_ids, a.cameras, a.modalities)]
                  for a in sides]
        return [Trial(0, side(stored[0], f"{where}: no query split"), side(stored[1], f"{where}: no gallery split"))]

    def describe(self, options, source):
        return f"manifest {source}, single gallery, same id and camera dropped"

    def eval_settings(self, options):
        return {}


register(Manifest())
