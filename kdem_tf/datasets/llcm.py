"""LLCM (Zhang & Wang, CVPR 2023; the authors' ZYK100/LLCM DEEN code): reader, cameras, protocol, stand-in.

Layout::

    ROOT/{train_vis,train_nir,test_vis,test_nir}/camC/PPPP/*.jpg
    ROOT/idx/train_vis.txt, ROOT/idx/train_nir.txt   lines "relative/path label"
    ROOT/idx/test_id.txt                              one line: comma-separated ids

LLCM's nine cameras each film by day in colour and at night in near infrared, so one camera
number appears in both modalities. Preprocessing writes `train`, and the two whole test pools
`test_nir` (test_nir/) and `test_visible` (test_vis/), from which each trial draws.

The protocol exactly as the authors' DEEN/test.py computes it:

test.py evaluates with `test_mode`: [1, 2] "IR to VIS" (its default) or [2, 1] "VIS to IR".
`process_query_llcm(mode=test_mode[1])` lists every test image of one modality (mode 1:
test_vis/cam1..cam9, mode 2: test_nir/cam1,2,4..9), `process_gallery_llcm(mode=test_mode[0],
trial)` draws, after `random.seed(trial)`, one `random.choice` of the sorted files of each
test id (ascending) and camera (that list's order) of the other modality; trials 0..9.

- i2v ([1, 2]): queries = every test_nir image, gallery = the trial's draw from test_vis;
  `eval_llcm(-q·gᵀ, query, gallery)`.
- v2i ([2, 1]): the "query" pool is every test_vis image and the draw is from test_nir, but
  the script scores `eval_llcm(-g·qᵀ, gallery, query)`: the drawn infrared images are the
  queries and the whole visible pool is the gallery. Its "VIS to IR" numbers are therefore
  infrared queries (one per id and camera, redrawn per trial) searching every visible image;
  `trials_from_folder(direction="v2i")` builds exactly that.

eval_llcm drops, for each query, the gallery images of the same id and the same camera
number (an LLCM camera films both modalities), then scores mAP / mINP on the kept list and
a CMC over ids collapsed to their first kept image (`kdem_tf.evaluation.same_camera`).
"""
from __future__ import annotations

import os
import random
from typing import Dict, List, Sequence, Tuple

import numpy as np

from kdem_tf.data import synthetic_people as synthetic
from kdem_tf.datasets import base, files, register
from kdem_tf.datasets.files import DatasetError, ImageRecord, join
from kdem_tf.evaluation.trials import EvalOptions, EvaluationError, RankingRule, Split, Trial, make_split
from kdem_tf.image_contract import INFRARED, VISIBLE

NAME = "llcm"
DIRECTIONS = ("i2v", "v2i")
TRIALS = 10
# The camera folders the authors' process_query_llcm / process_gallery_llcm read:
# test_vis cam1..cam9, test_nir the same without cam3.
VISIBLE_CAMERAS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
INFRARED_CAMERAS = (1, 2, 4, 5, 6, 7, 8, 9)
FOLDERS = {("train", VISIBLE): "train_vis", ("train", INFRARED): "train_nir",
           ("test", VISIBLE): "test_vis", ("test", INFRARED): "test_nir"}
RANKING = RankingRule(NAME, collapse_ids=True, drop_same_camera=True)  # eval_llcm
SYNTHETIC_LAYOUT = 2  # the synthetic renderer's layout key: LLCM's people differ from the others'

Entry = Tuple[int, int, str]  # (person id, camera, dataset-relative path)


# ----------------------------------------------------------------------------- reader


def path_parts(path: str, where: str) -> Tuple[str, int, int]:
    """(top folder, camera, person id) of "FOLDER/camC/PPPP/name", from its folders; `where` (file and
    line) is named when the path does not have that structure."""
    return files.camera_folder_parts(path, where, 4)


def train_records(root: str, check_files: bool = True) -> List[ImageRecord]:
    """Training images of idx/train_vis.txt and idx/train_nir.txt, with the files' labels.

    Each line is "relative/path label"; the path must lie under the list's folder
    (train_vis/ or train_nir/). Labels must be contiguous from 0 over both lists and
    name one identity each.
    """
    records, label_pid, first_list = [], {}, None
    for modality in (VISIBLE, INFRARED):
        folder = FOLDERS[("train", modality)]
        list_path = join(root, f"idx/{folder}.txt")
        first_list = first_list or list_path
        for rel, label, number in files.read_path_label_list(list_path):
            where = f"{list_path}:{number}"
            top, camera, pid = path_parts(rel, where)
            if top != folder:
                raise DatasetError(f"{where}: path {rel!r} is not under {folder}/")
            if label < 0 or label_pid.setdefault(label, pid) != pid:
                raise DatasetError(f"{where}: label {label} of id {pid} is negative or already names "
                                   f"id {label_pid.get(label)}")
            if check_files and not files.gfile().exists(join(root, rel)):
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


def image_files(root: str, folder: str, camera: int, person_id: int) -> List[str]:
    """Sorted image names in FOLDER/camC/PPPP ([] when absent), as the authors list them."""
    return files.image_files(join(root, f"{folder}/cam{camera}/{person_id:04d}"))


def test_ids(root: str) -> List[int]:
    """The ids of idx/test_id.txt, in the authors' order: sorted as zero-padded strings."""
    return sorted(files.read_id_line(join(root, "idx/test_id.txt")), key=lambda pid: f"{pid:04d}")


def test_records(root: str) -> Dict[str, List[ImageRecord]]:
    """The test pools {visible: test_vis images, infrared: test_nir images} of the listed ids.

    Order as the authors' process_query_llcm: ids (zero-padded string order), then the
    camera list of the modality (`VISIBLE_CAMERAS` / `INFRARED_CAMERAS`), then
    sorted file names. A listed id with no image in either pool is an error naming
    idx/test_id.txt.
    """
    id_file = join(root, "idx/test_id.txt")
    for modality in (VISIBLE, INFRARED):
        files.require_dir(join(root, FOLDERS[("test", modality)]), "LLCM test")
    cameras = {VISIBLE: VISIBLE_CAMERAS, INFRARED: INFRARED_CAMERAS}
    out: Dict[str, List[ImageRecord]] = {VISIBLE: [], INFRARED: []}
    for pid in test_ids(root):
        found = 0
        for modality in (VISIBLE, INFRARED):
            folder = FOLDERS[("test", modality)]
            for camera in cameras[modality]:
                for name in image_files(root, folder, camera, pid):
                    out[modality].append(ImageRecord(f"{folder}/cam{camera}/{pid:04d}/{name}", pid, -1,
                                                     camera, modality))
                    found += 1
        if not found:
            raise DatasetError(f"{id_file}:1: id {pid} is listed but has no images in test_nir/ or "
                               f"test_vis/ (camC/{pid:04d}/)")
    return out


# ----------------------------------------------------------------------------- protocol


def protocol_order(entries: Sequence[Entry]) -> List[Entry]:
    """Entries in the authors' listing order: id as zero-padded string, camera, file name."""
    return sorted(entries, key=lambda e: (f"{e[0]:04d}", e[1], e[2].rsplit("/", 1)[-1]))


def draw_one_per_camera(entries: Sequence[Entry], trial: int) -> List[Entry]:
    """One image per (id, camera) as process_gallery_llcm draws it after random.seed(trial).

    `entries` is a whole pool; the draw walks ids and cameras in protocol order and picks
    `random.choice` of each folder's sorted files.
    """
    folders: Dict[Tuple[int, int], List[Entry]] = {}
    for entry in protocol_order(entries):
        folders.setdefault((entry[0], entry[1]), []).append(entry)
    rng = random.Random(trial)  # the stream of random.seed(trial) + random.choice
    return [rng.choice(files) for files in folders.values()]


def _split(entries: Sequence[Entry], modality: str, what: str) -> Split:
    return make_split([e[2] for e in entries], [e[0] for e in entries], [e[1] for e in entries], modality, what)


def trials_from_pools(pools: Dict[str, Sequence[Entry]], direction: str = "i2v",
                      trials: int = TRIALS) -> List[Trial]:
    """LLCM trials 0..trials-1 from the test pools {visible: entries, infrared: entries}."""
    if direction not in DIRECTIONS:
        raise EvaluationError(f"LLCM direction must be one of {DIRECTIONS}, got {direction!r}")
    visible, infrared = protocol_order(pools[VISIBLE]), protocol_order(pools[INFRARED])
    out = []
    for t in range(trials):
        if direction == "i2v":
            query = _split(infrared, INFRARED, "LLCM infrared pool (test_nir)")
            gallery = _split(draw_one_per_camera(visible, t), VISIBLE, f"LLCM trial {t} test_vis draw")
        else:  # test.py's [2, 1]: the infrared draw is scored as the queries (see the module doc)
            query = _split(draw_one_per_camera(infrared, t), INFRARED, f"LLCM trial {t} test_nir draw")
            gallery = _split(visible, VISIBLE, "LLCM visible pool (test_vis)")
        out.append(Trial(t, query, gallery))
    return out


def trials_from_folder(root: str, direction: str = "i2v", trials: int = TRIALS) -> List[Trial]:
    """LLCM trials from the raw folder (idx/test_id.txt, test_vis/, test_nir/)."""
    try:
        pools = test_records(root)
    except DatasetError as e:
        raise EvaluationError(str(e)) from e
    return trials_from_pools({m: [(r.person_id, r.camera, r.path) for r in rs] for m, rs in pools.items()},
                             direction, trials)


# ----------------------------------------------------------------------------- synthetic stand-in


def synthetic_split(identities: int, seed: int) -> Dict[str, List[int]]:
    """About half the ids (1-based) for training, the rest for testing, at least one each."""
    if identities < 2:
        raise ValueError(f"LLCM layout needs at least 2 identities (train and test), got {identities}")
    ids = synthetic.random_stream(seed, SYNTHETIC_LAYOUT, synthetic.SPLIT_STREAM).permutation(np.arange(1, identities + 1)).tolist()
    n_test = max(1, identities // 2)
    return {"test": sorted(ids[:n_test]), "train": sorted(ids[n_test:])}


def synthetic_cameras(seed: int, pid: int) -> Dict[str, List[int]]:
    """{visible: cameras, infrared: cameras} of an id: each modality in at least two cameras."""
    rng = synthetic.random_stream(seed, SYNTHETIC_LAYOUT, synthetic.COVER_STREAM, pid)
    out = {}
    for modality, cameras in ((VISIBLE, VISIBLE_CAMERAS), (INFRARED, INFRARED_CAMERAS)):
        count = int(rng.integers(2, 5))
        out[modality] = sorted(int(c) for c in rng.choice(cameras, size=count, replace=False))
    return out


def generate_synthetic(out: str, identities: int = 16, seed: int = 0, image_size: Tuple[int, int] = (64, 32),
                  images_per_camera: int = 2, overwrite: bool = False, progress: bool = True) -> str:
    """Writes an LLCM-layout dataset; returns its absolute path.

    Args:
        out: target folder (absent or empty unless overwrite).
        identities: number of ids (>= 2), numbered from 1.
        seed: non-negative seed; the same seed gives byte-identical files.
        image_size: (height, width).
        images_per_camera: images per id, camera and modality it appears in.
    """
    synthetic.check_settings(seed, image_size, images_per_camera)
    split = synthetic_split(identities, seed)
    plan = [(which, pid, modality, cam, i) for which, ids in split.items() for pid in ids
            for modality, cams in synthetic_cameras(seed, pid).items() for cam in cams
            for i in range(1, images_per_camera + 1)]

    def write(root: str) -> None:
        os.makedirs(os.path.join(root, "idx"))
        for folder in FOLDERS.values():
            os.makedirs(os.path.join(root, folder))
        lists: Dict[str, List[str]] = {VISIBLE: [], INFRARED: []}
        label_of = {pid: label for label, pid in enumerate(split["train"])}
        bar = synthetic.progress_bar(len(plan), NAME, progress)
        for which, pid, modality, cam, i in plan:
            infrared = modality == INFRARED
            rel = f"{FOLDERS[(which, modality)]}/cam{cam}/{pid:04d}/{i:04d}.jpg"
            img = synthetic.render_image(seed, SYNTHETIC_LAYOUT, pid, cam + (10 if infrared else 0), (cam, i),
                                         infrared, image_size, geometry_camera=cam)
            synthetic.save_image(img, os.path.join(root, rel))
            if which == "train":
                lists[modality].append(f"{rel} {label_of[pid]}\n")
            bar.update()
        bar.close()
        for modality, lines in lists.items():
            with open(os.path.join(root, f"idx/{FOLDERS[('train', modality)]}.txt"), "w") as f:
                f.writelines(lines)
        with open(os.path.join(root, "idx/test_id.txt"), "w") as f:
            f.write(",".join(str(pid) for pid in split["test"]) + "\n")

    return synthetic.write_atomically(out, overwrite, write)


# ----------------------------------------------------------------------------- the plug-in


class Llcm(base.Dataset):
    name = NAME
    title = "LLCM"
    data_root_help = "ROOT/{train_vis,train_nir,test_vis,test_nir}/camC/PPPP/*.jpg and ROOT/idx/"
    splits = (base.SplitSpec(base.TRAIN), base.SplitSpec("test_nir", INFRARED), base.SplitSpec("test_visible", VISIBLE))
    eval_splits = ("test_nir", "test_visible")
    ranking = RANKING
    sampling = "deen"
    default_direction = "i2v"
    eval_options = (base.direction_option(DIRECTIONS),)
    synthetic_writer = staticmethod(generate_synthetic)
    synthetic_defaults = {"identities": 16, "images_per_camera": 2}

    def read_splits(self, root, options):
        test = test_records(root)
        return {base.TRAIN: train_records(root), "test_nir": test[INFRARED], "test_visible": test[VISIBLE]}

    def trials_from_folder(self, root, options: EvalOptions):
        return trials_from_folder(root, options.direction, options.trials)

    def trials_from_records(self, sides, options: EvalOptions, settings, where):
        pools = {modality: [(int(p), int(c), path) for p, c, path in zip(a.person_ids, a.cameras, a.paths)]
                 for modality, a in ((INFRARED, sides[0]), (VISIBLE, sides[1]))}
        return trials_from_pools(pools, options.direction or self.default_direction, options.trials)

    def describe(self, options, source):
        return "LLCM " + ("infrared to visible" if options.direction == "i2v" else
                          "visible to infrared (as DEEN/test.py scores it: infrared draw vs visible pool)")



register(Llcm())
