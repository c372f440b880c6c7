"""The official SYSU-MM01 gallery sampling (exp/rand_perm_cam.mat) against hand-checked galleries.

The .mat files are written with scipy.io.savemat in the structure of the dataset's file
(a 6 x 1 cell per camera, a cell per person id, a [trials, images] matrix of 1-based image
positions or an empty matrix), and read back the way MPANet's Python reads it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from kdem_tf import evaluation as ev
from kdem_tf.datasets import sysu_official as so
from tests.test_evaluate_cli import identity_features, image_paths, run_cli
from tests.test_evaluation import make_sysu
from kdem_tf.datasets import sysu as sysu_ds


# test ids 1 and 2; cam2 has no folder for id 1. Image counts (make_sysu: 3 + (id + cam) % 3):
# id 1: cam1 5, cam3 4, cam4 5, cam5 3, cam6 4; id 2: cam1 3, cam2 4, cam3 5, cam4 3, cam5 4, cam6 5
PERMUTATIONS = {  # (camera, id): rows of trials 1 and 2 (MATLAB run_time), 1-based positions
    (1, 1): [[3, 1, 2, 5, 4], [5, 4, 3, 2, 1]],
    (1, 2): [[2, 3, 1], [1, 3, 2]],
    (2, 2): [[4, 1, 3, 2], [2, 4, 1, 3]],
    (4, 1): [[1, 2, 3, 4, 5], [4, 5, 1, 2, 3]],
    (4, 2): [[3, 2, 1], [2, 1, 3]],
    (5, 1): [[2, 3, 1], [3, 1, 2]],
    (5, 2): [[4, 3, 2, 1], [1, 2, 4, 3]],
}
NUM_IDS = 3  # the file lists ids 1..3; id 3 (not a test id) has empty entries


def write_perm(path: Path, permutations=PERMUTATIONS, num_ids=NUM_IDS, cameras=6, name="rand_perm_cam") -> Path:
    cells = np.empty((cameras, 1), dtype=object)
    for cam in range(1, cameras + 1):
        persons = np.empty((1, num_ids), dtype=object)
        for pid in range(1, num_ids + 1):
            rows = permutations.get((cam, pid))
            persons[0, pid - 1] = np.zeros((0, 0)) if rows is None else np.asarray(rows, np.float64)
        cells[cam - 1, 0] = persons
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {name: cells})
    return path


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    root = make_sysu(tmp_path_factory.mktemp("official") / "SYSU", test_ids=(1, 2), per_camera=3, skip=((2, 1),))
    write_perm(root / "exp" / "rand_perm_cam.mat")
    return root


def test_galleries_equal_the_hand_checked_ones(sysu):
    all_1 = sysu_ds.trials(str(sysu), "all", trials=2, sampling="official")
    # trial 1: camera outer, id inner, first entry of row 1 (0003.jpg = position 3)
    assert list(all_1[0].gallery.paths) == [
        "cam1/0001/0003.jpg", "cam1/0002/0002.jpg", "cam2/0002/0004.jpg",
        "cam4/0001/0001.jpg", "cam4/0002/0003.jpg", "cam5/0001/0002.jpg", "cam5/0002/0004.jpg"]
    assert list(all_1[1].gallery.paths) == [
        "cam1/0001/0005.jpg", "cam1/0002/0001.jpg", "cam2/0002/0002.jpg",
        "cam4/0001/0004.jpg", "cam4/0002/0002.jpg", "cam5/0001/0003.jpg", "cam5/0002/0001.jpg"]
    assert list(all_1[0].gallery.pids) == [1, 2, 2, 1, 2, 1, 2] and list(all_1[0].gallery.cams) == [1, 1, 2, 4, 4, 5, 5]
    assert all_1[0].query.paths == sysu_ds.query(str(sysu)).paths  # the query set is AGW's
    indoor_multi = sysu_ds.trials(str(sysu), "indoor", trials=2, multi_shot=True, sampling="official")
    assert list(indoor_multi[1].gallery.paths) == (
        [f"cam1/0001/{p:04d}.jpg" for p in (5, 4, 3, 2, 1)] + [f"cam1/0002/{p:04d}.jpg" for p in (1, 3, 2)]
        + [f"cam2/0002/{p:04d}.jpg" for p in (2, 4, 1, 3)])
    assert sysu_ds.trials(str(sysu), "all", trials=1)[0].gallery.paths != all_1[0].gallery.paths  # agw differs


def mpanet_gallery_names(perm, cams, ids, trial_id, num_shots):
    """How MPANet-style code indexes the loaded file (names without extension)."""
    names = []
    for cam in cams:
        cam_perm = perm[cam - 1][0].squeeze()
        for i in ids:
            if cam_perm[i - 1].size == 0:  # get_testing_set.m skips empty entries
                continue
            names += [f"cam{cam}/{i:04d}/{ins:04d}" for ins in cam_perm[i - 1][trial_id][:num_shots].astype(int)]
    return names


def test_reader_follows_the_structure_python_readers_assume(tmp_path):
    rng = np.random.default_rng(0)
    counts = {(cam, pid): int(rng.integers(1, 13)) for cam in (1, 2, 4, 5) for pid in range(1, 8)}
    perms = {key: [rng.permutation(n) + 1 for _ in range(10)] for key, n in counts.items() if key != (2, 3)}
    path = write_perm(tmp_path / "perm.mat", perms, num_ids=7)
    ours = so.read_rand_perm_cam(path.read_bytes(), str(path))
    raw = loadmat(str(path))["rand_perm_cam"]
    assert len(ours) == 6 and all(len(persons) == 7 for persons in ours) and ours[1][2].shape == (0, 0)
    for trial in (0, 9):
        for shots in (1, 10):
            names = so.official_gallery_paths(ours, "perm.mat", [6, 1, 3, 2], (1, 2, 4, 5), trial, shots,
                                              lambda cam, pid: [f"{i:04d}.jpg" for i in range(1, counts[cam, pid] + 1)])
            assert [n[:-4] for n in names] == mpanet_gallery_names(raw, (1, 2, 4, 5), [1, 2, 3, 6], trial, shots)


@pytest.mark.parametrize("case,expect", [
    ("missing", "rand_perm_cam.mat: not found"),
    ("not_mat", "not a readable MATLAB .mat file"),
    ("no_variable", "no variable 'rand_perm_cam' (found ['other'])"),
    ("five_cameras", "of shape (5, 1), expected a MATLAB file with a 6 x 1 cell"),
    ("beyond_folder", "camera 4, person 2, trial 1: image position 7, but cam4/0002/ holds 3 images"),
    ("fraction", "camera 1, person 1: expected a [trials, images] matrix of 1-based image positions"),
    ("few_persons", "camera 1 lists 1 persons; test id 2 has no permutation"),
    ("few_trials", "camera 1, person 1: 2 trials, trial 3 asked"),
])
def test_bad_files_name_the_file_and_what_was_expected(case, expect, tmp_path):
    root = make_sysu(tmp_path / "SYSU", test_ids=(1, 2), per_camera=3, skip=((2, 1),))
    mat = root / "exp" / "rand_perm_cam.mat"
    if case == "not_mat":
        mat.write_bytes(b"MATLAB? no")
    elif case == "no_variable":
        savemat(str(mat), {"other": np.ones(3)})
    elif case == "five_cameras":
        write_perm(mat, cameras=5)
    elif case in ("beyond_folder", "fraction", "few_persons"):
        perms = dict(PERMUTATIONS)
        if case == "beyond_folder":
            perms[4, 2] = [[7, 2, 1], [2, 1, 3]]
        elif case == "fraction":
            perms[1, 1] = [[1.5, 2, 3, 4, 5], [5, 4, 3, 2, 1]]
        else:
            perms = {key: rows for key, rows in perms.items() if key[1] == 1}
        write_perm(mat, perms, num_ids=1 if case == "few_persons" else NUM_IDS)
    elif case == "few_trials":
        write_perm(mat)
    trials = 3 if case == "few_trials" else 1
    with pytest.raises(ev.EvaluationError) as info:
        sysu_ds.trials(str(root), "all", trials=trials, sampling="official")
    assert expect in str(info.value) and str(mat) in str(info.value), str(info.value)


def test_cli_official_rows_are_labelled(sysu, tmp_path, capsys):
    paths = image_paths(sysu, "*.jpg")
    feats = identity_features(paths, lambda p: int(p.split("/")[1]))
    np.savez(tmp_path / "feats.npz", paths=np.array(paths), features=feats)
    code, stdout, _ = run_cli(["--dataset", "sysu", "--data-root", sysu, "--features", tmp_path / "feats.npz",
                               "--trials", 2, "--gallery-sampling", "official", "--rerank-params", "4,2,0.3",
                               "--output", tmp_path / "m.json"], capsys)
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert metrics["gallery_sampling"] == "official" and metrics["gallery_sizes"] == [7, 7]
    assert {v["gallery_sampling"] for v in metrics["variants"].values()} == {"official"}
    assert stdout.count("official gallery sampling") == 3 and "agw gallery sampling" not in stdout
    feature_of = dict(zip(paths, feats.astype(np.float64)))
    for t, trial in enumerate(sysu_ds.trials(str(sysu), "all", 2, sampling="official")):
        qf = np.stack([feature_of[p] for p in trial.query.paths])
        gf = np.stack([feature_of[p] for p in trial.gallery.paths])
        _, mAP, _ = ev.evaluate_features(qf, gf, trial.query.pids, trial.gallery.pids, trial.query.cams,
                                         trial.gallery.cams, "sysu")
        assert metrics["per_trial"][t]["mAP"] == mAP * 100
    with pytest.raises(SystemExit):
        run_cli(["--dataset", "regdb", "--data-root", sysu, "--features", tmp_path / "feats.npz",
                 "--gallery-sampling", "official"], capsys)
