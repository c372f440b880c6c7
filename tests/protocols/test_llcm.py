"""LLCM: `kdem_tf.evaluate --dataset llcm` against a step-by-step re-implementation of the authors'
DEEN/test.py + data_manager.process_query_llcm / process_gallery_llcm + eval_metrics.eval_llcm."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdem_tf import evaluate as cli
from kdem_tf.datasets import llcm as llcm_ds

VIS_CAMS = ["test_vis/cam%d" % c for c in range(1, 10)]                  # process_*_llcm mode 1
NIR_CAMS = ["test_nir/cam%d" % c for c in (1, 2, 4, 5, 6, 7, 8, 9)]      # mode 2: no cam3
KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def _jpg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 4), (90, 90, 90)).save(path)


def make_llcm(root: Path, test_ids=tuple(range(1, 25)), seed: int = 0) -> Path:
    """A tiny LLCM tree: random cameras and file names per id; id 24 only in cam5 of both modalities
    (its queries keep no match once the same camera is dropped); a test_nir/cam3 folder the
    protocol must not read; two training ids."""
    rng = np.random.default_rng(seed)
    for pid in test_ids:
        for folder, cams in (("test_vis", range(1, 10)), ("test_nir", (1, 2, 4, 5, 6, 7, 8, 9))):
            chosen = [5] if pid == 24 else rng.choice(list(cams), size=int(rng.integers(1, 4)), replace=False)
            for cam in chosen:
                for _ in range(int(rng.integers(1, 4))):
                    _jpg(root / f"{folder}/cam{cam}/{pid:04d}/{int(rng.integers(10**6)):06d}.jpg")
    _jpg(root / "test_nir/cam3/0001/000000.jpg")
    (root / "idx").mkdir(parents=True)
    (root / "idx/test_id.txt").write_text(",".join(str(p) for p in test_ids) + "\n")
    for folder, name in (("train_vis", "train_vis.txt"), ("train_nir", "train_nir.txt")):
        lines = []
        for label, pid in enumerate((30, 31)):
            rel = f"{folder}/cam2/{pid:04d}/0001.jpg"
            _jpg(root / rel)
            lines.append(f"{rel} {label}")
        (root / "idx" / name).write_text("\n".join(lines) + "\n")
    return root


# ----------------------------------------------------------------------------- the authors' code, step by step


def ref_process_query_llcm(data_path, mode):
    cameras = VIS_CAMS if mode == 1 else NIR_CAMS
    with open(os.path.join(data_path, "idx/test_id.txt")) as f:
        ids = ["%04d" % int(y) for y in f.read().splitlines()[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                files.extend(sorted([img_dir + "/" + i for i in os.listdir(img_dir)]))
    cams = [int(p.split("cam")[1][0]) for p in files]       # the first "cam" in the whole path
    pids = [int(p.split("cam")[1][2:6]) for p in files]
    return files, np.array(pids), np.array(cams)


def ref_process_gallery_llcm(data_path, mode, trial):
    random.seed(trial)
    cameras = VIS_CAMS if mode == 1 else NIR_CAMS
    with open(os.path.join(data_path, "idx/test_id.txt")) as f:
        ids = ["%04d" % int(y) for y in f.read().splitlines()[0].split(",")]
    files = []
    for pid in sorted(ids):
        for cam in cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                files.append(random.choice(sorted([img_dir + "/" + i for i in os.listdir(img_dir)])))
    return files, np.array([int(p.split("cam")[1][2:6]) for p in files]), \
        np.array([int(p.split("cam")[1][0]) for p in files])


def ref_eval_llcm(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20):
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    pred_label = g_pids[indices]
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    new_all_cmc, all_AP, all_INP, num_valid_q = [], [], [], 0.0
    for q_idx in range(num_q):
        q_pid, q_camid = q_pids[q_idx], q_camids[q_idx]
        order = indices[q_idx]
        keep = np.invert((g_pids[order] == q_pid) & (g_camids[order] == q_camid))
        new_cmc = pred_label[q_idx][keep]
        new_index = np.unique(new_cmc, return_index=True)[1]
        new_cmc = [new_cmc[index] for index in sorted(new_index)]
        new_match = (np.asarray(new_cmc) == q_pid).astype(np.int32)
        new_all_cmc.append(new_match.cumsum()[:max_rank])
        orig_cmc = matches[q_idx][keep]
        if not np.any(orig_cmc):
            continue
        cmc = orig_cmc.cumsum()
        pos_max_idx = np.max(np.where(orig_cmc == 1))
        all_INP.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        num_valid_q += 1.0
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(orig_cmc.cumsum())]) * orig_cmc
        all_AP.append(tmp_cmc.sum() / orig_cmc.sum())
    new_all_cmc = np.asarray(new_all_cmc).astype(np.float32).sum(0) / num_valid_q
    return new_all_cmc, np.mean(all_AP), np.mean(all_INP)


def ref_test_py(data_path, feature_of, test_mode):
    """DEEN/test.py's LLCM branch with one feature per image (its distmat7 with one term)."""
    query_img, query_label, query_cam = ref_process_query_llcm(data_path, mode=test_mode[1])
    query_feat = np.stack([feature_of(p) for p in query_img])
    per_trial, all_cmc, all_mAP, all_mINP = [], 0, 0, 0
    for trial in range(10):
        gall_img, gall_label, gall_cam = ref_process_gallery_llcm(data_path, mode=test_mode[0], trial=trial)
        gall_feat = np.stack([feature_of(p) for p in gall_img])
        if test_mode == [1, 2]:
            distmat = np.matmul(query_feat, np.transpose(gall_feat))
            cmc, mAP, mINP = ref_eval_llcm(-distmat, query_label, gall_label, query_cam, gall_cam)
        else:
            distmat = np.matmul(gall_feat, np.transpose(query_feat))
            cmc, mAP, mINP = ref_eval_llcm(-distmat, gall_label, query_label, gall_cam, query_cam)
        per_trial.append((cmc, mAP, mINP))
        all_cmc, all_mAP, all_mINP = all_cmc + cmc, all_mAP + mAP, all_mINP + mINP
    return per_trial, (all_cmc / 10, all_mAP / 10, all_mINP / 10)


# ----------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def llcm_root(tmp_path_factory):
    root = make_llcm(tmp_path_factory.mktemp("l") / "LLCM")
    assert "cam" not in str(root)  # the authors' parser needs a root without "cam" in it
    paths = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(40, 16))
    feats = np.stack([centres[int(p.split("/")[2]) % 40] + 1.3 * rng.normal(size=16) for p in paths])
    np.savez(root.parent / "feats.npz", paths=np.array(paths), features=feats)
    return root, dict(zip(paths, feats))


@pytest.mark.parametrize("direction, test_mode", [("i2v", [1, 2]), ("v2i", [2, 1])])
def test_cli_matches_the_authors_test_py(llcm_root, tmp_path, capsys, direction, test_mode):
    root, table = llcm_root
    per_trial, (cmc, mAP, mINP) = ref_test_py(str(root), lambda p: table[os.path.relpath(p, root)], test_mode)
    out = tmp_path / "m.json"
    code = cli.main(["--dataset", "llcm", "--data-root", str(root), "--features", str(root.parent / "feats.npz"),
                     "--direction", direction, "--distance", "dot", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads(out.read_text())
    assert metrics["trials"] == list(range(10)) and metrics["direction"] == direction
    np.testing.assert_array_equal(np.float32(metrics["cmc"]), np.float32(cmc * 100.0))
    np.testing.assert_allclose([metrics["mAP"], metrics["mINP"]], [mAP * 100, mINP * 100], rtol=1e-12)
    for ours, (t_cmc, t_mAP, t_mINP) in zip(metrics["per_trial"], per_trial):
        assert ours["rank1"] == float(t_cmc[0]) * 100.0 and ours["rank10"] == float(t_cmc[9]) * 100.0
        np.testing.assert_allclose([ours["mAP"], ours["mINP"]], [t_mAP * 100, t_mINP * 100], rtol=1e-12)
    assert metrics["variants"]["plain"]["label"] == "plain, deen sampling" and metrics["gallery_sampling"] == "deen"
    assert "LLCM" in capsys.readouterr().out


def test_v2i_scores_the_infrared_draw_against_the_visible_pool(llcm_root):
    root, _ = llcm_root
    trials = llcm_ds.trials_from_folder(str(root), "v2i", trials=2)
    vis_pool = ref_process_query_llcm(str(root), 1)[0]
    for t, trial in enumerate(trials):
        drawn = ref_process_gallery_llcm(str(root), 2, t)[0]
        assert list(trial.query.paths) == [os.path.relpath(p, root) for p in drawn]
        assert list(trial.gallery.paths) == [os.path.relpath(p, root) for p in vis_pool]
        assert trial.query.modality == "infrared" and trial.gallery.modality == "visible"
    assert trials[0].query.paths != trials[1].query.paths  # redrawn per trial
    assert not any(p.startswith("test_nir/cam3/") for t in trials for p in t.query.paths)


def test_missing_test_id_file_is_named(llcm_root, tmp_path, capsys):
    root, _ = llcm_root
    (tmp_path / "LLCM").mkdir()
    for folder in ("test_vis", "test_nir"):
        os.symlink(root / folder, tmp_path / "LLCM" / folder)
    code = cli.main(["--dataset", "llcm", "--data-root", str(tmp_path / "LLCM"),
                     "--features", str(root.parent / "feats.npz")])
    assert code == 2
    assert "idx/test_id.txt: missing split file" in capsys.readouterr().err


def test_listed_id_without_images_is_named_with_its_line(llcm_root, tmp_path, capsys):
    root, _ = llcm_root
    (tmp_path / "LLCM" / "idx").mkdir(parents=True)
    for folder in ("test_vis", "test_nir"):
        os.symlink(root / folder, tmp_path / "LLCM" / folder)
    (tmp_path / "LLCM/idx/test_id.txt").write_text("1,2,77\n")
    code = cli.main(["--dataset", "llcm", "--data-root", str(tmp_path / "LLCM"),
                     "--features", str(root.parent / "feats.npz")])
    assert code == 2
    err = capsys.readouterr().err
    assert "idx/test_id.txt:1: id 77 is listed but has no images" in err
