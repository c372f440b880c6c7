"""Metrics and protocols of kdem_tf.evaluation against hand-worked cases and an AGW oracle.

The oracle (benchmarks/agw_oracle.py) follows AGW's eval_metrics.py step by step, one query at a time
(github.com/mangye16/Cross-Modal-Re-ID-baseline, eval_metrics.py, commit a903f42,
functions eval_sysu and eval_regdb): the same numpy operations in the same order,
so its numbers are AGW's. The library's vectorised code must equal it exactly.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.agw_oracle import agw_eval_regdb, agw_eval_sysu
from kdem_tf import evaluation as ev
from kdem_tf.datasets import sysu as sysu_ds
from kdem_tf.datasets import regdb as regdb_ds


# ----------------------------------------------------------------------------- AGW oracle


def assert_same(ours, reference):
    """Bit-for-bit: same CMC array (dtype included) and same mAP / mINP floats."""
    np.testing.assert_array_equal(ours[0], reference[0])
    assert ours[0].dtype == reference[0].dtype
    assert ours[1] == reference[1] and ours[2] == reference[2], (ours[1:], reference[1:])


def random_case(rng, num_q, num_g, num_ids, quantise=None, dtype=np.float64):
    """Identity-structured random SYSU-like labels and distances (quantised to force ties)."""
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    q_cams = rng.choice([3, 6], num_q)
    g_cams = rng.choice([1, 2, 4, 5], num_g)
    dist = rng.random((num_q, num_g)) + 0.8 * (q_pids[:, None] != g_pids[None, :])
    if quantise:
        dist = np.round(dist * quantise) / quantise
    return dist.astype(dtype), q_pids, g_pids, q_cams, g_cams


# ----------------------------------------------------------------------------- hand-worked


def test_cam3_query_ignores_cam2_gallery():
    # gallery ranked: id1@cam2, id2@cam1, id1@cam1
    dist = np.array([[0.1, 0.2, 0.3]])
    g_pids, g_cams = np.array([1, 2, 1]), np.array([2, 1, 1])
    cmc, mAP, mINP = sysu_ds.eval_sysu(dist, np.array([1]), g_pids, np.array([3]), g_cams)
    np.testing.assert_array_equal(cmc, [0, 1, 1])  # kept list: id2, id1; the curve stays flat past it
    assert (mAP, mINP) == (0.5, 0.5)
    cmc, mAP, mINP = sysu_ds.eval_sysu(dist, np.array([1]), g_pids, np.array([6]), g_cams)
    np.testing.assert_array_equal(cmc, [1, 1, 1])  # a cam6 query keeps the cam2 image
    assert mAP == pytest.approx((1 + 2 / 3) / 2) and mINP == pytest.approx(2 / 3)


def test_sysu_cmc_collapses_repeated_ids_but_regdb_does_not():
    # ranked ids 2, 2, 3, 1, 1: collapsed list 2, 3, 1 → hit at rank 3; uncollapsed at rank 4
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids, g_cams = np.array([2, 2, 3, 1, 1]), np.array([1, 4, 5, 1, 4])
    cmc, mAP, mINP = sysu_ds.eval_sysu(dist, np.array([1]), g_pids, np.array([6]), g_cams)
    np.testing.assert_array_equal(cmc, [0, 0, 1, 1, 1])
    assert mAP == pytest.approx((1 / 4 + 2 / 5) / 2) and mINP == pytest.approx(2 / 5)
    cmc, mAP2, mINP2 = regdb_ds.eval_regdb(dist, np.array([1]), g_pids)
    np.testing.assert_array_equal(cmc, [0, 0, 0, 1, 1])
    assert (mAP2, mINP2) == (mAP, mINP)


def test_absent_query_identity_is_skipped_but_sysu_cmc_divides_by_valid_queries():
    dist = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    q_pids, q_cams = np.array([1, 1, 9]), np.array([6, 6, 6])  # id 9 is not in the gallery
    g_pids, g_cams = np.array([1, 2, 3]), np.array([1, 1, 1])
    cmc, mAP, mINP = sysu_ds.eval_sysu(dist, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_array_equal(cmc, np.array([1, 1, 2], np.float32) / np.float32(2))
    assert mAP == pytest.approx((1 + 1 / 3) / 2) and mINP == pytest.approx((1 + 1 / 3) / 2)
    assert_same((cmc, mAP, mINP), agw_eval_sysu(dist, q_pids, g_pids, q_cams, g_cams))


def test_minp_uses_the_last_correct_match():
    # hits at ranks 1 and 4 of 4: INP = 2/4, AP = (1/1 + 2/4)/2
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    cmc, mAP, mINP = regdb_ds.eval_regdb(dist, np.array([5]), np.array([5, 1, 2, 5]))
    assert mINP == 0.5 and mAP == 0.75


def test_no_valid_query_and_empty_inputs_raise():
    with pytest.raises(ev.EvaluationError, match="no query identity"):
        regdb_ds.eval_regdb(np.zeros((1, 2)), np.array([7]), np.array([1, 2]))
    with pytest.raises(ev.EvaluationError, match="empty gallery"):
        regdb_ds.eval_regdb(np.zeros((1, 0)), np.array([7]), np.array([], int))


# ----------------------------------------------------------------------------- oracle agreement


@pytest.mark.parametrize("num_q,num_g,num_ids,quantise,dtype", [
    (50, 80, 40, None, np.float64), (200, 301, 96, None, np.float64), (120, 500, 60, 20, np.float64),
    (300, 150, 30, 8, np.float32), (64, 1200, 40, None, np.float32), (7, 129, 21, 4, np.float64),
])
def test_sysu_equals_agw_exactly(num_q, num_g, num_ids, quantise, dtype):
    rng = np.random.default_rng(num_q * 7 + num_g)
    dist, q_pids, g_pids, q_cams, g_cams = random_case(rng, num_q, num_g, num_ids, quantise, dtype)
    q_pids[: num_q // 10] = num_ids + 5  # some identities absent from the gallery
    reference = agw_eval_sysu(dist, q_pids, g_pids, q_cams, g_cams)
    assert_same(sysu_ds.eval_sysu(dist, q_pids, g_pids, q_cams, g_cams), reference)
    # tiny chunks: many chunks, some with a single query of one camera
    assert_same(ev.evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, protocol="sysu", chunk_bytes=1), reference)


@pytest.mark.parametrize("num_q,num_g,num_ids,quantise", [
    (60, 60, 12, None), (206, 412, 206, None), (150, 90, 30, 10), (40, 8, 5, 3),
])
def test_regdb_equals_agw_exactly(num_q, num_g, num_ids, quantise):
    rng = np.random.default_rng(num_q + num_g)
    dist, q_pids, g_pids, _, _ = random_case(rng, num_q, num_g, num_ids, quantise)
    reference = agw_eval_regdb(dist, q_pids, g_pids)
    assert_same(regdb_ds.eval_regdb(dist, q_pids, g_pids), reference)
    assert_same(ev.evaluate_rank(dist, q_pids, g_pids, protocol="regdb", chunk_bytes=5000), reference)


def test_features_path_equals_agw_test_py_distance():
    # AGW test.py: distmat = np.matmul(qf, gf.T) on float64 copies, eval on -distmat
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(30, 16))
    q_pids, g_pids = rng.integers(0, 30, 90), rng.integers(0, 30, 70)
    qf = (centres[q_pids] + rng.normal(size=(90, 16))).astype(np.float32)
    gf = (centres[g_pids] + rng.normal(size=(70, 16))).astype(np.float32)
    q_cams, g_cams = rng.choice([3, 6], 90), rng.choice([1, 2, 4, 5], 70)
    qn = qf.astype(np.float64) / np.linalg.norm(qf.astype(np.float64), axis=1, keepdims=True)
    gn = gf.astype(np.float64) / np.linalg.norm(gf.astype(np.float64), axis=1, keepdims=True)
    reference = agw_eval_sysu(-np.matmul(qn, np.transpose(gn)), q_pids, g_pids, q_cams, g_cams)
    assert_same(ev.evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, "sysu", "cosine"), reference)
    reference = agw_eval_regdb(-np.matmul(qf.astype(np.float64), gf.astype(np.float64).T), q_pids, g_pids)
    assert_same(ev.evaluate_features(qf, gf, q_pids, g_pids, protocol="regdb", distance="dot"), reference)
    euclid = np.linalg.norm(qf[:, None, :].astype(np.float64) - gf[None].astype(np.float64), axis=2)
    ours = ev.evaluate_features(qf, gf, q_pids, g_pids, protocol="regdb", distance="euclidean")
    np.testing.assert_allclose(ours[0], agw_eval_regdb(euclid, q_pids, g_pids)[0])


def test_bad_features_raise():
    with pytest.raises(ev.EvaluationError, match="NaN or inf"):
        ev.evaluate_features(np.array([[np.nan, 1.0]]), np.ones((1, 2)), [1], [1], protocol="regdb")
    with pytest.raises(ev.EvaluationError, match="dims"):
        ev.evaluate_features(np.ones((1, 3)), np.ones((1, 2)), [1], [1], protocol="regdb")


def test_trial_average_accumulates_like_agw_test_py():
    results = [ev.TrialResult(t, np.array([0.1 * t, 0.3], np.float32), 0.1 * t, 0.05, 3, 4) for t in range(10)]
    cmc, mAP, mINP = ev.average_trials(results)
    total = np.array([0.0, 0.3], np.float32)
    for t in range(1, 10):
        total = total + np.array([0.1 * t, 0.3], np.float32)
    np.testing.assert_array_equal(cmc, total / 10)
    assert mAP == sum(0.1 * t for t in range(10)) / 10
    assert ev.summary(cmc, mAP, mINP)["rank20"] == float(cmc[-1]) * 100


# ----------------------------------------------------------------------------- protocols


def write_image(path: Path, colour, size=(16, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(int(c) for c in colour)).save(path)


def make_sysu(root: Path, test_ids=(1, 2, 3, 5), per_camera=3, skip=((2, 3), (5, 1))) -> Path:
    """A small SYSU-MM01 tree: every test id in every camera except the (camera, id) pairs of `skip`."""
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
        for pid in test_ids:
            if (cam, pid) in skip:
                continue
            for n in range(per_camera + (pid + cam) % 3):
                write_image(root / f"cam{cam}/{pid:04d}/{n + 1:04d}.jpg", (40 * pid % 256, 20 * cam, 9 * n))
    (root / "exp").mkdir(exist_ok=True)
    (root / "exp/test_id.txt").write_text(",".join(str(p) for p in reversed(test_ids)) + "\n")
    return root


def make_regdb(root: Path, ids=6, per_id=2, trials=(1, 2)) -> Path:
    """A small RegDB tree with test lists for the given trials (label = identity index)."""
    for t in trials:
        lines = {"visible": [], "thermal": []}
        for pid in range(ids):
            for n in range(per_id):
                for folder, name in (("Visible", "visible"), ("Thermal", "thermal")):
                    rel = f"{folder}/{pid + 1}/{name}_{t}_{n}.bmp"
                    write_image(root / rel, (30 * pid, 100 if name == "visible" else 200, 20 * n))
                    lines[name].append(f"{rel} {pid}")
        (root / "idx").mkdir(parents=True, exist_ok=True)
        for name, entries in lines.items():
            (root / f"idx/test_{name}_{t}.txt").write_text("\n".join(entries) + "\n")
    return root


def agw_process_gallery_sysu(data_path, mode="all", trial=0):
    """Independent re-implementation of AGW/DDAG data_manager.process_gallery_sysu (seeded)."""
    random.seed(trial)
    rgb_cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    with open(os.path.join(data_path, "exp/test_id.txt")) as file:
        ids = ["%04d" % int(y) for y in file.read().splitlines()[0].split(",")]
    files_rgb = []
    for pid in sorted(ids):
        for cam in rgb_cameras:
            img_dir = os.path.join(data_path, cam, pid)
            if os.path.isdir(img_dir):
                files_rgb.append(random.choice(sorted(img_dir + "/" + i for i in os.listdir(img_dir))))
    return [os.path.relpath(p, data_path) for p in files_rgb]


def test_sysu_query_and_gallery_follow_agw(tmp_path):
    root = make_sysu(tmp_path / "sysu")
    query = sysu_ds.query(str(root))
    expected = [f"cam{c}/{p:04d}/{n}" for p in (1, 2, 3, 5) for c in (3, 6)
                for n in sorted(os.listdir(root / f"cam{c}/{p:04d}"))]
    assert list(query.paths) == expected
    assert list(query.cams) == [int(p[3]) for p in expected] and query.modality == "infrared"
    for mode in ("all", "indoor"):
        for trial in range(10):
            gallery = sysu_ds.gallery(str(root), mode, trial)
            assert list(gallery.paths) == agw_process_gallery_sysu(str(root), mode, trial)
            assert list(gallery.pids) == [int(p.split("/")[1]) for p in gallery.paths]
    assert len(sysu_ds.gallery(str(root), "all", 0).paths) == 4 * 4 - 2
    multi = sysu_ds.gallery(str(root), "indoor", 1, multi_shot=True)
    assert len(multi.paths) == len(set(multi.paths)) == sum(
        min(10, len(os.listdir(root / f"cam{c}/{p:04d}"))) for p in (1, 2, 3, 5) for c in (1, 2)
        if (root / f"cam{c}/{p:04d}").is_dir())
    assert len(sysu_ds.trials(str(root), "all", trials=3)) == 3


def test_regdb_directions_swap_query_and_gallery(tmp_path):
    root = make_regdb(tmp_path / "regdb")
    v2i = regdb_ds.trials(str(root), trials=2, direction="v2i")
    i2v = regdb_ds.trials(str(root), trials=2, direction="i2v")
    assert [t.trial for t in v2i] == [1, 2]
    assert v2i[1].query.paths[0] == "Visible/1/visible_2_0.bmp" and v2i[1].gallery.modality == "infrared"
    assert i2v[0].query.paths == v2i[0].gallery.paths and i2v[0].gallery.paths == v2i[0].query.paths
    np.testing.assert_array_equal(i2v[0].query.pids, np.repeat(np.arange(6), 2))
    with pytest.raises(ev.EvaluationError, match="trial 3.*test_visible_3.txt"):
        regdb_ds.trials(str(root), trials=3)


@pytest.mark.parametrize("mode,multi_shot", [("all", False), ("indoor", False), ("all", True)])
def test_sysu_trials_from_pool_paths_equal_the_raw_folder_trials(mode, multi_shot, tmp_path):
    """The preprocessed path (pools in any order) rebuilds AGW's query order and gallery draws."""
    root = make_sysu(tmp_path / "SYSU", test_ids=(1, 2, 3, 5, 8, 13), per_camera=3)
    raw = sysu_ds.trials(str(root), mode, 10, multi_shot)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    query = [p for p in files if p.startswith(("cam3/", "cam6/"))]
    gallery = [p for p in files if not p.startswith(("cam3/", "cam6/"))]
    pools = sysu_ds.trials_from_paths(list(rng.permutation(query)), list(rng.permutation(gallery)), mode, 10,
                                      multi_shot)
    assert len(pools) == len(raw) == 10
    assert len({t.gallery.paths for t in raw}) > 1  # the draws differ between trials
    for a, b in zip(raw, pools):
        assert a.trial == b.trial and a.query.paths == b.query.paths and a.gallery.paths == b.gallery.paths
        for side_a, side_b in ((a.query, b.query), (a.gallery, b.gallery)):
            np.testing.assert_array_equal(side_a.pids, side_b.pids)
            np.testing.assert_array_equal(side_a.cams, side_b.cams)
            assert side_a.modality == side_b.modality
