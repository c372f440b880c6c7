"""Synthetic stand-in for LLCM, written in the authors' on-disk layout (ZYK100/LLCM, DEEN/).

    python -m kdem_tf.data.synthetic --layout llcm --out data/llcm_synth

Layout::

    ROOT/{train_vis,train_nir,test_vis,test_nir}/camC/PPPP/NNNN.jpg
    ROOT/idx/train_vis.txt, ROOT/idx/train_nir.txt   "relative/path label", labels 0.. over sorted ids
    ROOT/idx/test_id.txt                              one line of comma-separated test ids

LLCM's nine cameras each film by day in colour and at night in near infrared, so one
camera number appears in both modalities. Every id is seen by at least two visible and
two infrared cameras (infrared only in the cameras the authors' test code reads), so
each query has a match in another camera in either search direction.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np

from kdem_tf.data import synthetic
from kdem_tf.data.datasets import LLCM_FOLDERS, LLCM_INFRARED_CAMERAS, LLCM_VISIBLE_CAMERAS
from kdem_tf.image_contract import INFRARED, VISIBLE

LAYOUT_KEY = 2  # synthetic's layout keys: 0 SYSU, 1 RegDB, 2 LLCM (different people)
_SPLIT, _COVER = synthetic._SPLIT, synthetic._COVER  # synthetic's random-stream keys


def llcm_split(identities: int, seed: int) -> Dict[str, List[int]]:
    """About half the ids (1-based) for training, the rest for testing, at least one each."""
    if identities < 2:
        raise ValueError(f"LLCM layout needs at least 2 identities (train and test), got {identities}")
    ids = synthetic._rng(seed, LAYOUT_KEY, _SPLIT).permutation(np.arange(1, identities + 1)).tolist()
    n_test = max(1, identities // 2)
    return {"test": sorted(ids[:n_test]), "train": sorted(ids[n_test:])}


def llcm_cameras(seed: int, pid: int) -> Dict[str, List[int]]:
    """{visible: cameras, infrared: cameras} of an id: each modality in at least two cameras."""
    rng = synthetic._rng(seed, LAYOUT_KEY, _COVER, pid)
    out = {}
    for modality, cameras in ((VISIBLE, LLCM_VISIBLE_CAMERAS), (INFRARED, LLCM_INFRARED_CAMERAS)):
        count = int(rng.integers(2, 5))
        out[modality] = sorted(int(c) for c in rng.choice(cameras, size=count, replace=False))
    return out


def generate_llcm(out: str, identities: int = 16, seed: int = 0, image_size: Tuple[int, int] = (64, 32),
                  images_per_camera: int = 2, overwrite: bool = False, progress: bool = True) -> str:
    """Writes an LLCM-layout dataset; returns its absolute path.

    Args:
        out: target folder (absent or empty unless overwrite).
        identities: number of ids (>= 2), numbered from 1.
        seed: non-negative seed; the same seed gives byte-identical files.
        image_size: (height, width).
        images_per_camera: images per id, camera and modality it appears in.
    """
    synthetic._check(seed, image_size, images_per_camera)
    split = llcm_split(identities, seed)
    plan = [(which, pid, modality, cam, i) for which, ids in split.items() for pid in ids
            for modality, cams in llcm_cameras(seed, pid).items() for cam in cams
            for i in range(1, images_per_camera + 1)]

    def write(root: str) -> None:
        os.makedirs(os.path.join(root, "idx"))
        for folder in LLCM_FOLDERS.values():
            os.makedirs(os.path.join(root, folder))
        lists: Dict[str, List[str]] = {VISIBLE: [], INFRARED: []}
        label_of = {pid: label for label, pid in enumerate(split["train"])}
        bar = synthetic._progress(len(plan), "llcm", progress)
        for which, pid, modality, cam, i in plan:
            infrared = modality == INFRARED
            rel = f"{LLCM_FOLDERS[(which, modality)]}/cam{cam}/{pid:04d}/{i:04d}.jpg"
            img = synthetic.render_image(seed, LAYOUT_KEY, pid, cam + (10 if infrared else 0), (cam, i),
                                         infrared, image_size, geometry_camera=cam)
            synthetic._save(img, os.path.join(root, rel))
            if which == "train":
                lists[modality].append(f"{rel} {label_of[pid]}\n")
            bar.update()
        bar.close()
        for modality, lines in lists.items():
            with open(os.path.join(root, f"idx/{LLCM_FOLDERS[('train', modality)]}.txt"), "w") as f:
                f.writelines(lines)
        with open(os.path.join(root, "idx/test_id.txt"), "w") as f:
            f.write(",".join(str(pid) for pid in split["test"]) + "\n")

    return synthetic._atomic_write(out, overwrite, write)
