"""Dataset readers: real layouts read right, broken layouts give errors that name the file and line."""
from __future__ import annotations

import os
import shutil

import pytest
from kdem_tf.datasets import files as ds_files
from kdem_tf.datasets import sysu as sysu_ds
from kdem_tf.datasets import regdb as regdb_ds
from kdem_tf.datasets import llcm as llcm_ds


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory):
    return sysu_ds.generate_synthetic(str(tmp_path_factory.mktemp("sysu") / "SYSU-MM01"), identities=8,
                                   images_per_camera=2, progress=False)


@pytest.fixture(scope="module")
def regdb_root(tmp_path_factory):
    return regdb_ds.generate_synthetic(str(tmp_path_factory.mktemp("regdb") / "RegDB"), identities=6,
                                    images_per_camera=3, progress=False)


def _copy(root, tmp_path):
    target = str(tmp_path / "copy")
    shutil.copytree(root, target)
    return target


def test_sysu_train_uses_train_and_val_ids_with_contiguous_labels(sysu_root):
    train = sysu_ds.train_records(sysu_root)
    ids = sysu_ds.read_ids(sysu_root, "train") + sysu_ds.read_ids(sysu_root, "val")
    assert ds_files.identities(train) == set(ids)
    label_of = {r.person_id: r.label for r in train}
    assert sorted(label_of.values()) == list(range(len(ids)))
    assert all(label_of[p] < label_of[q] for p, q in zip(sorted(ids), sorted(ids)[1:]))
    for r in train:
        assert r.modality == ("infrared" if r.camera in (3, 6) else "visible")
        assert r.path.startswith(f"cam{r.camera}/{r.person_id:04d}/")


def test_sysu_test_pools_split_by_modality(sysu_root):
    query, gallery = sysu_ds.test_records(sysu_root)
    test_ids = set(sysu_ds.read_ids(sysu_root, "test"))
    assert ds_files.identities(query) == test_ids == ds_files.identities(gallery)
    assert {r.camera for r in query} <= {3, 6} and {r.camera for r in gallery} <= {1, 2, 4, 5}
    assert all(r.label == -1 for r in query + gallery)
    assert not test_ids & ds_files.identities(sysu_ds.train_records(sysu_root))


def test_sysu_missing_split_file_is_named(sysu_root, tmp_path):
    root = _copy(sysu_root, tmp_path)
    os.remove(os.path.join(root, "exp", "val_id.txt"))
    with pytest.raises(ds_files.DatasetError, match=r"exp/val_id\.txt: missing split file"):
        sysu_ds.train_records(root)


def test_sysu_missing_camera_folder_is_named(sysu_root, tmp_path):
    root = _copy(sysu_root, tmp_path)
    shutil.rmtree(os.path.join(root, "cam5"))
    with pytest.raises(ds_files.DatasetError, match=r"cam5: missing SYSU-MM01 camera cam5 folder"):
        sysu_ds.test_records(root)


def test_sysu_malformed_id_is_named(sysu_root, tmp_path):
    root = _copy(sysu_root, tmp_path)
    with open(os.path.join(root, "exp", "test_id.txt"), "w") as f:
        f.write("1,2,x3\n")
    with pytest.raises(ds_files.DatasetError, match=r"test_id\.txt:1: malformed id 'x3'"):
        sysu_ds.test_records(root)


def test_sysu_listed_but_absent_id_is_named(sysu_root, tmp_path):
    root = _copy(sysu_root, tmp_path)
    with open(os.path.join(root, "exp", "test_id.txt")) as f:
        ids = f.read().strip()
    with open(os.path.join(root, "exp", "test_id.txt"), "w") as f:
        f.write(ids + ",9999\n")
    with pytest.raises(ds_files.DatasetError, match=r"test_id\.txt: id 9999 is listed but has no images"):
        sysu_ds.test_records(root)


def test_regdb_records_per_trial(regdb_root):
    train = regdb_ds.records(regdb_root, "train", 1)
    test = regdb_ds.records(regdb_root, "test", 1)
    assert {r.camera for r in train["visible"]} == {1} and {r.camera for r in train["infrared"]} == {2}
    assert sorted({r.label for r in train["visible"]}) == list(range(3))
    assert not ds_files.identities(train["visible"]) & ds_files.identities(test["visible"])
    assert all(r.path.startswith("Visible/") for r in test["visible"])
    # Trials differ in their split of identities.
    assert any(ds_files.identities(regdb_ds.records(regdb_root, "train", t)["visible"]) != ds_files.identities(train["visible"])
               for t in range(2, 11))


def test_regdb_malformed_line_is_named_with_line_number(regdb_root, tmp_path):
    root = _copy(regdb_root, tmp_path)
    path = os.path.join(root, "idx", "test_thermal_2.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[2] = lines[2].split()[0]  # label missing
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ds_files.DatasetError, match=r"test_thermal_2\.txt:3: malformed line"):
        regdb_ds.records(root, "test", 2)


def test_regdb_listed_image_missing_is_named(regdb_root, tmp_path):
    root = _copy(regdb_root, tmp_path)
    rel = regdb_ds.read_list(root, "train", "visible", 1)[0][0]
    os.remove(os.path.join(root, rel))
    with pytest.raises(ds_files.DatasetError, match=rf"train_visible_1\.txt:1: listed image {rel} does not exist"):
        regdb_ds.records(root, "train", 1)


def test_regdb_missing_trial_file_and_bad_trial(regdb_root, tmp_path):
    root = _copy(regdb_root, tmp_path)
    os.remove(os.path.join(root, "idx", "train_thermal_4.txt"))
    with pytest.raises(ds_files.DatasetError, match=r"idx/train_thermal_4\.txt: missing split file"):
        regdb_ds.records(root, "train", 4)
    with pytest.raises(ds_files.DatasetError, match="trial must be 1..10"):
        regdb_ds.records(root, "train", 11)


# ----------------------------------------------------------------------------- LLCM


@pytest.fixture(scope="module")
def llcm_root(tmp_path_factory):

    return llcm_ds.generate_synthetic(str(tmp_path_factory.mktemp("llcm") / "LLCM"), identities=6,
                                        images_per_camera=1, progress=False)


def test_llcm_ids_and_cameras_come_from_the_folders_even_under_a_cam_root(llcm_root, tmp_path):
    # the authors' parser splits on the first "cam" of the whole path: a root named "camera..." breaks it
    root = str(tmp_path / "camera_exports" / "LLCM")
    shutil.copytree(llcm_root, root)
    for records in (llcm_ds.train_records(root), *llcm_ds.test_records(root).values()):
        for r in records:
            folder, cam, pid = r.path.split("/")[:3]
            assert (r.camera, r.person_id) == (int(cam[3:]), int(pid)) and folder[-3:] in ("vis", "nir")
            assert r.modality == ("visible" if folder.endswith("vis") else "infrared")
    assert llcm_ds.test_records(root) == llcm_ds.test_records(llcm_root)


def test_llcm_train_labels_and_test_pools(llcm_root):
    train = llcm_ds.train_records(llcm_root)
    labels = {r.person_id: r.label for r in train}
    assert sorted(labels.values()) == list(range(len(labels)))
    assert {r.modality for r in train} == {"visible", "infrared"}
    test = llcm_ds.test_records(llcm_root)
    test_ids = set(llcm_ds.test_ids(llcm_root))
    assert ds_files.identities(test["visible"]) | ds_files.identities(test["infrared"]) == test_ids
    assert not test_ids & set(labels) and all(r.label == -1 for rs in test.values() for r in rs)
    assert {r.camera for r in test["infrared"]} <= set(llcm_ds.INFRARED_CAMERAS)


def test_llcm_missing_test_id_file_is_named(llcm_root, tmp_path):
    root = _copy(llcm_root, tmp_path)
    os.remove(os.path.join(root, "idx", "test_id.txt"))
    with pytest.raises(ds_files.DatasetError, match=r"idx/test_id\.txt: missing split file"):
        llcm_ds.test_records(root)


def test_llcm_listed_id_absent_from_both_pools_is_named(llcm_root, tmp_path):
    root = _copy(llcm_root, tmp_path)
    ids = open(os.path.join(root, "idx", "test_id.txt")).read().strip()
    with open(os.path.join(root, "idx", "test_id.txt"), "w") as f:
        f.write(ids + ",4321\n")
    with pytest.raises(ds_files.DatasetError, match=r"idx/test_id\.txt:1: id 4321 is listed but has no images in "
                                              r"test_nir/ or test_vis/"):
        llcm_ds.test_records(root)


@pytest.mark.parametrize("line, message", [
    ("train_vis/0001/0001.jpg 0", "is not FOLDER/camC/PPPP/file"),
    ("train_nir/cam1/0001/0001.jpg 0", "is not under train_vis/"),
    ("train_vis/cam1/0001/0001.jpg", "malformed line"),
])
def test_llcm_bad_train_line_is_named_with_its_line(llcm_root, tmp_path, line, message):
    root = _copy(llcm_root, tmp_path)
    path = os.path.join(root, "idx", "train_vis.txt")
    lines = open(path).read().splitlines()
    lines[1] = line
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ds_files.DatasetError, match=rf"train_vis\.txt:2: .*{message}"):
        llcm_ds.train_records(root)
