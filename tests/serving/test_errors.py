"""Bad input to the exports (serving/export/: run folder, versions, embedder, gallery index): the
exception type, and a message naming the file or folder at fault (the behaviour, whatever module
ends up holding it)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from kdem_tf import artifacts
from serving.export import embedder as embedder_lib
from serving.export import gallery_index as index_lib
from serving.export import run_folder


def _message(error) -> str:
    return str(error.value)


# ----------------------------------------------------------------------------- export


def test_a_folder_that_is_not_a_run_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        run_folder.load_run(str(tmp_path))
    assert str(tmp_path / "run_info.json") in _message(error) and "training run folder" in _message(error)
    (tmp_path / "run_info.json").write_text(json.dumps({"image_size": [64, 32]}))
    with pytest.raises(FileNotFoundError) as error:  # the model file is missing too
        run_folder.load_run(str(tmp_path))
    assert str(tmp_path / "inference_model.keras") in _message(error)


def test_run_info_without_image_size_names_the_file(tmp_path):
    (tmp_path / "run_info.json").write_text(json.dumps({"num_classes": 4}))
    (tmp_path / "inference_model.keras").write_bytes(b"not read before run_info.json is checked")
    with pytest.raises(ValueError, match="no 'image_size'") as error:
        run_folder.load_run(str(tmp_path))
    assert str(tmp_path / "run_info.json") in _message(error)


def test_publishing_an_existing_version_names_it_and_leaves_it(tmp_path):
    base = tmp_path / "kdem"
    (base / "1").mkdir(parents=True)
    (base / "1" / "saved_model.pb").write_bytes(b"version 1")
    written = []
    with pytest.raises(FileExistsError) as error:
        artifacts.publish_version(written.append, str(base), version=1)
    assert str(base / "1") in _message(error) and not written
    assert (base / "1" / "saved_model.pb").read_bytes() == b"version 1"
    with pytest.raises(ValueError, match="version must be >= 1, got 0"):
        artifacts.publish_version(written.append, str(base), version=0)
    assert sorted(os.listdir(base)) == ["1"]  # no temporary folder left behind


def test_a_failed_export_write_leaves_no_version(tmp_path):
    base = tmp_path / "kdem"

    def write(folder):
        os.makedirs(folder)
        open(os.path.join(folder, "saved_model.pb"), "wb").close()
        raise OSError(f"{folder}: disk full")

    with pytest.raises(OSError, match="disk full"):
        artifacts.publish_version(write, str(base))
    assert os.listdir(base) == [] and artifacts.list_versions(str(base)) == []


# ----------------------------------------------------------------------------- embedder


def test_a_base_path_without_versions_is_named(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        artifacts.resolve_version_dir(str(tmp_path))
    assert str(tmp_path) in _message(error) and "no SavedModel" in _message(error)


def test_a_missing_version_names_the_base_and_the_versions_it_has(tmp_path):
    for version in (1, 3):
        (tmp_path / str(version)).mkdir()
        (tmp_path / str(version) / "saved_model.pb").write_bytes(b"")
    assert artifacts.resolve_version_dir(str(tmp_path)) == str(tmp_path / "3")
    with pytest.raises(FileNotFoundError) as error:
        artifacts.resolve_version_dir(str(tmp_path), version=2)
    assert str(tmp_path) in _message(error) and "no version 2" in _message(error) and "[1, 3]" in _message(error)


def test_a_corrupt_saved_model_names_its_folder(tmp_path):
    version = tmp_path / "1"
    version.mkdir()
    (version / "saved_model.pb").write_bytes(b"\x00 not a SavedModel protocol buffer")
    with pytest.raises(Exception) as error:
        embedder_lib.Embedder(str(tmp_path))
    assert str(version) in _message(error)


# ----------------------------------------------------------------------------- index


def test_a_gallery_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as error:
        list(index_lib.read_gallery(str(missing)))
    assert str(missing) in _message(error)


def test_a_gallery_folder_without_images_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError) as error:
        list(index_lib.read_gallery(str(tmp_path)))
    assert str(tmp_path) in _message(error) and "no images" in _message(error)


def test_an_unknown_gallery_modality_is_named(tmp_path):
    with pytest.raises(ValueError, match="'thermal'"):
        list(index_lib.read_gallery(str(tmp_path), modality="thermal"))


def test_saving_over_an_existing_index_names_it_and_leaves_it(tmp_path):
    out = tmp_path / "index"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    entries = [index_lib.GalleryEntry(person_id=1, camera=1, path="a.png", modality="visible")]
    with pytest.raises(FileExistsError) as error:
        index_lib.save_index(str(out), np.ones((1, 4), np.float32), entries, {"mode": "brute_force"})
    assert str(out) in _message(error) and (out / "manifest.json").read_text() == "{}"


def test_a_missing_index_names_the_file_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        index_lib.load_index(str(tmp_path / "no-index"))
    assert str(tmp_path / "no-index") in _message(error)


def test_a_corrupt_index_manifest_names_the_file(tmp_path):
    (tmp_path / artifacts.INDEX_MANIFEST_FILE).write_text('{"format": 1, "cou')
    with pytest.raises(ValueError) as error:
        index_lib.load_index(str(tmp_path))
    assert str(tmp_path / artifacts.INDEX_MANIFEST_FILE) in _message(error)
