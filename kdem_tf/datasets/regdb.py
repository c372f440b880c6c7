"""RegDB (Nguyen et al., Sensors 2017): reader, cameras, trial splits, AGW's protocol, synthetic stand-in.

Layout::

    ROOT/Visible/..., ROOT/Thermal/...
    ROOT/idx/{train,test}_{visible,thermal}_{trial}.txt   lines "relative/path label"

One dual camera: camera 1 visible, camera 2 thermal. Preprocessing writes one trial (`--trial N`):
`train`, `test_visible`, `test_thermal`. Protocol: AGW's eval_regdb (plain CMC), visible to
thermal (`v2i`) or back (`i2v`, AGW's --tvsearch), one model per trial, ids = the list labels.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from kdem_tf.data import synthetic_people as synthetic
from kdem_tf.datasets import base, files, register
from kdem_tf.datasets.files import DatasetError, ImageRecord, join
from kdem_tf.evaluation import metrics
from kdem_tf.evaluation.trials import EvalOptions, EvaluationError, RankingRule, Trial, make_split
from kdem_tf.image_contract import INFRARED, VISIBLE

NAME = "regdb"
TRIALS = tuple(range(1, 11))
VISIBLE_CAMERA = 1
THERMAL_CAMERA = 2
DIRECTIONS = ("v2i", "i2v")
RANKING = RankingRule(NAME)
SIDES = ((VISIBLE, "visible", VISIBLE_CAMERA), (INFRARED, "thermal", THERMAL_CAMERA))  # list name per modality
SYNTHETIC_LAYOUT = 1  # the synthetic renderer's layout key


def person_id(path: str, label: int, offset: int) -> int:
    """RegDB's identity number: the numeric folder in `Visible/<n>/...`, else label + offset."""
    parts = path.split("/")
    if len(parts) >= 3 and parts[1].isdigit():
        return int(parts[1])
    return label + offset


def read_list(root: str, split: str, modality_name: str, trial: int) -> List[Tuple[str, int, int]]:
    """Reads `idx/{split}_{modality_name}_{trial}.txt` → [(relative_path, label, line_number)]."""
    if trial not in TRIALS:
        raise DatasetError(f"RegDB trial must be 1..10, got {trial}")
    path = join(root, f"idx/{split}_{modality_name}_{trial}.txt")
    entries = files.read_path_label_list(path)
    if not entries:
        raise DatasetError(f"{path}: no entries")
    return entries


def records(root: str, split: str, trial: int, check_files: bool = True) -> Dict[str, List[ImageRecord]]:
    """Images of one RegDB split ("train" or "test") of one trial, by modality.

    Train labels must be contiguous from 0 (as the published index files are); test records keep
    the file's label as their identity label for evaluation (`label` is -1: not training labels).
    """
    if split not in ("train", "test"):
        raise DatasetError(f"RegDB split must be 'train' or 'test', got {split!r}")
    files.require_dir(join(root, "Visible"), "RegDB Visible")
    files.require_dir(join(root, "Thermal"), "RegDB Thermal")
    out = {}
    offset = 0 if split == "train" else 100000  # keeps fallback ids of train and test apart
    for modality, name, camera in SIDES:
        list_path = join(root, f"idx/{split}_{name}_{trial}.txt")
        found = []
        for rel, label, number in read_list(root, split, name, trial):
            if check_files and not files.gfile().exists(join(root, rel)):
                raise DatasetError(f"{list_path}:{number}: listed image {rel} does not exist")
            found.append(ImageRecord(path=rel, person_id=person_id(rel, label, offset),
                                     label=label if split == "train" else -1, camera=camera, modality=modality))
        out[modality] = found
    if split == "train":
        labels = sorted({r.label for rs in out.values() for r in rs})
        if labels != list(range(len(labels))):
            raise DatasetError(f"{join(root, f'idx/train_visible_{trial}.txt')}: train labels must be "
                               f"contiguous from 0, got {labels[:5]}...{labels[-3:]}")
    return out


def test_labels(root: str, trial: int) -> Dict[str, int]:
    """Path → identity label of the trial's test lists (the labels the protocol matches on)."""
    return {rel: label for _, name, _ in SIDES for rel, label, _ in read_list(root, "test", name, trial)}


# ----------------------------------------------------------------------------- protocol


def trial_from_lists(trial: int, visible: Tuple[Sequence[str], Sequence[int]],
                     thermal: Tuple[Sequence[str], Sequence[int]], direction: str = "v2i") -> Trial:
    """One trial from (paths, identity ids) of its visible and thermal test lists."""
    if direction not in DIRECTIONS:
        raise EvaluationError(f"RegDB direction must be 'v2i' or 'i2v', got {direction!r}")
    sides = {name: make_split(list(paths), list(pids), [cam] * len(paths), modality, f"RegDB trial {trial} {name}")
             for name, (paths, pids), modality, cam in (("visible", visible, VISIBLE, VISIBLE_CAMERA),
                                                         ("thermal", thermal, INFRARED, THERMAL_CAMERA))}
    query, gallery = ("visible", "thermal") if direction == "v2i" else ("thermal", "visible")
    return Trial(trial, sides[query], sides[gallery])


def trials(root: str, trials: int = 10, direction: str = "v2i") -> List[Trial]:
    """Trials 1..trials from idx/test_{visible,thermal}_{t}.txt; ids are the file labels.

    v2i: query visible, gallery thermal; i2v (AGW --tvsearch): the reverse.
    """
    if direction not in DIRECTIONS:
        raise EvaluationError(f"RegDB direction must be 'v2i' or 'i2v', got {direction!r}")
    out = []
    for t in range(1, trials + 1):
        lists = {}
        for _, name, _ in SIDES:
            try:
                entries = read_list(root, "test", name, t)
            except DatasetError as e:
                raise EvaluationError(f"RegDB trial {t}: {e}") from e
            lists[name] = ([e[0] for e in entries], [e[1] for e in entries])
        out.append(trial_from_lists(t, lists["visible"], lists["thermal"], direction))
    return out


def eval_regdb(distmat, q_pids, g_pids, max_rank: int = 20):
    """AGW's eval_regdb: (cmc [max_rank] float32, mAP, mINP)."""
    return metrics.evaluate_rank(distmat, q_pids, g_pids, None, None, max_rank, protocol=RANKING)


# ----------------------------------------------------------------------------- synthetic stand-in


def generate_synthetic(out: str, identities: int = 20, seed: int = 0, image_size=(64, 32),
                       images_per_camera: int = 10, overwrite: bool = False, progress: bool = True,
                       workers: Optional[int] = None) -> str:
    """Writes a RegDB-layout dataset with idx files for trials 1..10; returns its absolute path.

    Args: as `kdem_tf.datasets.sysu.generate_synthetic`; identities >= 2, images_per_camera per id
    per modality. Each visible/thermal pair shares its pose, as RegDB's dual camera captures both at once.
    """
    synthetic.check_settings(seed, image_size, images_per_camera)
    if identities < 2:
        raise ValueError(f"RegDB layout needs at least 2 identities (train and test), got {identities}")
    people = {pid: synthetic.person(seed, SYNTHETIC_LAYOUT, pid) for pid in range(1, identities + 1)}

    def write(root: str) -> None:
        bar = synthetic.progress_bar(2 * identities * images_per_camera, NAME, progress)
        names: Dict[Tuple[int, bool], List[str]] = {}
        jobs: List[synthetic.RenderJob] = []
        for pid, person in people.items():
            for thermal, cam, folder, tag in ((False, 1, "Visible", "v"), (True, 2, "Thermal", "t")):
                listed = names.setdefault((pid, thermal), [])
                for i in range(1, images_per_camera + 1):  # the thermal twin shares the visible number
                    number = (pid - 1) * images_per_camera + i
                    view = ("back", "front")[i % 2]
                    name = f"{folder}/{pid}/{person.gender}_{view}_{tag}_{number:05d}_{pid}.bmp"
                    jobs.append(((seed, SYNTHETIC_LAYOUT, pid, cam, (0, i), thermal, image_size),
                                 {"geometry_camera": 1}, os.path.join(root, name)))
                    listed.append(name)
        synthetic.render_all(jobs, bar, workers)
        bar.close()
        os.makedirs(os.path.join(root, "idx"))
        for trial in TRIALS:
            ids = synthetic.random_stream(seed, SYNTHETIC_LAYOUT, synthetic.SPLIT_STREAM, trial).permutation(
                np.arange(1, identities + 1)).tolist()
            for split, chosen in (("train", ids[:identities // 2]), ("test", ids[identities // 2:])):
                for thermal, modality in ((False, "visible"), (True, "thermal")):
                    with open(os.path.join(root, f"idx/{split}_{modality}_{trial}.txt"), "w") as f:
                        for label, pid in enumerate(sorted(chosen)):  # labels 0.. over sorted ids
                            f.writelines(f"{name} {label}\n" for name in names[(pid, thermal)])

    return synthetic.write_atomically(out, overwrite, write)


def montage_rows(root: str, rows: int) -> List[List[str]]:
    """The synthetic montage's cells: visible/thermal pairs of the first ids."""
    cells = []
    for pid in range(1, rows + 1):
        if os.path.isdir(os.path.join(root, f"Visible/{pid}")):
            vis, thr = (sorted(os.path.join(root, m, str(pid), n) for n in os.listdir(os.path.join(root, m, str(pid)))
                               if n.endswith(".bmp"))[:3] for m in ("Visible", "Thermal"))
            cells.append([name for pair in zip(vis, thr) for name in pair])
    return cells


# ----------------------------------------------------------------------------- the plug-in


class Regdb(base.Dataset):
    name = NAME
    title = "RegDB"
    data_root_help = "ROOT/Visible, ROOT/Thermal and ROOT/idx/{train,test}_{visible,thermal}_{1..10}.txt"
    splits = (base.SplitSpec(base.TRAIN), base.SplitSpec("test_visible", VISIBLE),
              base.SplitSpec("test_thermal", INFRARED))
    eval_splits = ("test_visible", "test_thermal")
    ranking = RANKING
    sampling = "index"
    train_identities = 206
    default_direction = "v2i"
    preprocess_options = (base.CliOption("--trial", dict(type=int, default=1, help="RegDB trial 1..10")),)
    eval_options = (base.direction_option(DIRECTIONS),)
    synthetic_writer = staticmethod(generate_synthetic)
    synthetic_defaults = {"identities": 20, "images_per_camera": 10}

    def read_splits(self, root, options):
        trial = int(options.get("trial", 1))
        train, test = records(root, "train", trial), records(root, "test", trial)
        return {base.TRAIN: train[VISIBLE] + train[INFRARED], "test_visible": test[VISIBLE],
                "test_thermal": test[INFRARED]}

    def trials_from_folder(self, root, options: EvalOptions):
        return trials(root, options.trials, options.direction)

    def trials_from_records(self, sides, options: EvalOptions, settings, where):
        try:
            trial = int(settings.get("trial", 1))
        except (TypeError, ValueError) as error:
            raise EvaluationError(f"{where}: unreadable settings.trial ({error})") from None
        lists = []
        for side in sides:
            # The published index files list identity after identity: (id, path) order follows them.
            order = sorted(range(len(side.paths)), key=lambda i: (int(side.person_ids[i]), side.paths[i]))
            lists.append(([side.paths[i] for i in order], np.asarray(side.person_ids)[order]))
        return [trial_from_lists(trial, lists[0], lists[1], options.direction or self.default_direction)]

    def describe(self, options, source):
        return "RegDB " + ("visible to thermal" if options.direction == "v2i" else "thermal to visible")


    def montage(self, root, rows):
        return montage_rows(root, rows)


register(Regdb())
