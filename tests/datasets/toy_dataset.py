"""A dataset plug-in written the way docs/datasets.md tells a newcomer to: one file, one `register` call.

"Toy" layout (made up for the test, not a published dataset)::

    ROOT/train/<visible|infrared>/<person>_c<camera>_<n>.png
    ROOT/test/<visible|infrared>/<person>_c<camera>_<n>.png

Splits: train (both modalities), probe (infrared test images), pool (visible test images). Protocol:
every probe searches the whole pool once (one trial), torchreid's rule (same id and camera dropped).
Images are rendered by the project's synthetic people renderer, so a network can learn them.
"""
from __future__ import annotations

import os
from typing import List

from kdem_tf.data import synthetic_people
from kdem_tf.datasets import base, files, register
from kdem_tf.datasets.files import DatasetError, ImageRecord, join
from kdem_tf.evaluation.trials import RankingRule, Trial, make_split
from kdem_tf.image_contract import INFRARED, VISIBLE

NAME = "toy"
LAYOUT_KEY = 7  # the renderer's layout key: people of their own


def parse(path: str, label: int) -> ImageRecord:
    """ImageRecord of "split/modality/PID_cCAM_N.png"; DatasetError naming the path otherwise."""
    parts = path.split("/")
    stem = parts[-1].rsplit(".", 1)[0].split("_") if len(parts) == 3 else []
    if len(stem) != 3 or parts[1] not in (VISIBLE, INFRARED) or not stem[0].isdigit() or not stem[1][1:].isdigit():
        raise DatasetError(f"{path}: not split/modality/PID_cCAM_N.png")
    return ImageRecord(path, int(stem[0]), label, int(stem[1][1:]), parts[1])


def read(root: str, split: str) -> List[ImageRecord]:
    records = []
    for modality in (VISIBLE, INFRARED):
        folder = join(root, f"{split}/{modality}")
        files.require_dir(folder, f"toy {split}/{modality}")
        records += [parse(f"{split}/{modality}/{name}", -1) for name in files.image_files(folder)]
    if split == "train":
        label_of = {pid: i for i, pid in enumerate(sorted({r.person_id for r in records}))}
        records = [ImageRecord(r.path, r.person_id, label_of[r.person_id], r.camera, r.modality) for r in records]
    return records


def write(out: str, identities: int, seed: int, image_size, images_per_camera: int, overwrite: bool,
          progress: bool) -> str:
    """The synthetic stand-in: half the ids train, half test; camera 1 visible, camera 2 infrared."""
    synthetic_people.check_settings(seed, image_size, images_per_camera)

    def render(root: str) -> None:
        jobs = []
        for pid in range(1, identities + 1):
            split = "train" if pid <= identities // 2 else "test"
            for camera, modality in ((1, VISIBLE), (2, INFRARED)):
                for n in range(1, images_per_camera + 1):
                    jobs.append(((seed, LAYOUT_KEY, pid, camera, (camera, n), modality == INFRARED, image_size), {},
                                 os.path.join(root, split, modality, f"{pid}_c{camera}_{n}.png")))
        synthetic_people.render_all(jobs, synthetic_people.progress_bar(len(jobs), NAME, progress), workers=1)

    return synthetic_people.write_atomically(out, overwrite, render)


class Toy(base.Dataset):
    name = NAME
    title = "Toy"
    data_root_help = "ROOT/{train,test}/{visible,infrared}/PID_cCAM_N.png"
    splits = (base.SplitSpec(base.TRAIN), base.SplitSpec("probe", INFRARED), base.SplitSpec("pool", VISIBLE))
    eval_splits = ("probe", "pool")
    ranking = RankingRule(NAME, drop_same_camera=True)
    synthetic_writer = staticmethod(write)
    synthetic_defaults = {"identities": 8, "images_per_camera": 3}

    def read_splits(self, root, options):
        test = read(root, "test")
        return {base.TRAIN: read(root, "train"), "probe": [r for r in test if r.modality == INFRARED],
                "pool": [r for r in test if r.modality == VISIBLE]}

    def trials_from_folder(self, root, options):
        splits = self.read_splits(root, options)
        return [self._trial(splits["probe"], splits["pool"])]

    def trials_from_records(self, sides, options, settings, where):
        probe, pool = ([ImageRecord(p, int(i), -1, int(c), m) for p, i, c, m in
                        zip(s.paths, s.person_ids, s.cameras, s.modalities)] for s in sides)
        return [self._trial(probe, pool)]

    @staticmethod
    def _trial(probe, pool) -> Trial:
        side = lambda records, modality, what: make_split(  # noqa: E731
            [r.path for r in records], [r.person_id for r in records], [r.camera for r in records], modality, what)
        return Trial(0, side(probe, INFRARED, "toy probe"), side(pool, VISIBLE, "toy pool"))


register(Toy())
