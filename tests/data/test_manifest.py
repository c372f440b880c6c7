"""CSV manifest reader and `preprocess --dataset manifest`: records right, bad lines named by file, line, field."""
from __future__ import annotations

import glob
import os

import pytest
import tensorflow as tf
from PIL import Image
from kdem_tf.data import preprocess, schema
from kdem_tf.datasets import files as ds_files
from kdem_tf.datasets import manifest as manifest_ds
from kdem_tf import datasets

IN_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
HEADER = "path,person_id,camera,modality,split"


def write_manifest(folder, lines, header=HEADER, make_images=True) -> str:
    """Writes FOLDER/manifest.csv and a tiny image for every path of `lines` ("path,pid,cam,mod,split")."""
    os.makedirs(folder, exist_ok=True)
    for line in lines:
        rel = line.split(",")[0]
        if make_images and rel:
            os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
            Image.new("RGB", (6, 12), (40 * (len(rel) % 6), 80, 120)).save(os.path.join(folder, rel))
    path = os.path.join(folder, "manifest.csv")
    with open(path, "w") as f:
        f.write("\n".join([header] + list(lines)) + "\n")
    return path


def own_cameras(pids_train=(7, 3), pids_test=(11, 12)):
    lines = []
    for pid in pids_train:
        for cam, modality in ((1, "visible"), (2, "infrared")):
            lines += [f"lobby_{cam}/{pid}_{i}.jpg,{pid},{cam},{modality},train" for i in range(2)]
    for pid in pids_test:
        lines += [f"gate/{pid}_q.png,{pid},2,infrared,query", f"lobby_1/{pid}_g0.jpg,{pid},1,visible,gallery",
                  f"lobby_1/{pid}_g1.jpg,{pid},3,visible,gallery"]
    return lines


def test_records_labels_and_relative_paths(tmp_path):
    csv_path = write_manifest(str(tmp_path / "cams"), own_cameras())
    splits = manifest_ds.read_manifest(csv_path)
    assert {s: len(r) for s, r in splits.items()} == {"train": 8, "query": 2, "gallery": 4}
    assert {r.person_id: r.label for r in splits["train"]} == {3: 0, 7: 1}  # contiguous over sorted ids
    assert all(r.label == -1 for r in splits["query"] + splits["gallery"])
    assert splits["query"][0] == ds_files.ImageRecord("gate/11_q.png", 11, -1, 2, "infrared")
    assert manifest_ds.image_root(csv_path) == str(tmp_path / "cams")


@pytest.mark.parametrize("edit, line, field, message", [
    (lambda ls: [ls[0].rsplit(",", 1)[0]] + ls[1:], 2, "split", "missing column"),
    (lambda ls: [ls[0].replace(",visible,", ",colour,")] + ls[1:], 2, "modality", "must be one of"),
    (lambda ls: ls[:1] + [ls[1].replace(",7,1,", ",seven,1,")] + ls[2:], 3, "person_id", "not an integer"),
    (lambda ls: ls[:2] + [ls[2].replace(",7,2,", ",7,2.5,")] + ls[3:], 4, "camera", "not an integer"),
    (lambda ls: ls + ["gate/ghost.jpg,11,2,infrared,query"], 16, "path", "does not exist"),
    (lambda ls: ls + ["gate/7_q.png,7,2,infrared,query"], 16, "person_id", "in both train and query"),
    (lambda ls: ls[:1] + [ls[1].replace(",train", ",val")] + ls[2:], 3, "split", "must be one of"),
])
def test_bad_line_names_file_line_and_field(tmp_path, edit, line, field, message):
    lines = own_cameras()
    folder = str(tmp_path / "cams")
    write_manifest(folder, lines)  # the images of the good lines
    if field == "person_id" and "both" in message:
        Image.new("RGB", (6, 12)).save(os.path.join(folder, "gate/7_q.png"))
    csv_path = write_manifest(folder, edit(lines), make_images=False)
    with pytest.raises(ds_files.DatasetError) as info:
        manifest_ds.read_manifest(csv_path)
    text = str(info.value)
    assert text.startswith(f"{csv_path}:{line}: field '{field}'") and message in text, text


def test_missing_header_column_is_named(tmp_path):
    csv_path = write_manifest(str(tmp_path / "cams"), ["a.jpg,1,1,visible"], header="path,person_id,modality,split")
    with pytest.raises(ds_files.DatasetError, match=r"manifest\.csv:1: field 'camera': missing column"):
        manifest_ds.read_manifest(csv_path)


def test_preprocess_cli_writes_the_three_splits(tmp_path, capsys):
    csv_path = write_manifest(str(tmp_path / "cams"), own_cameras())
    out = str(tmp_path / "tfrecords")
    code = preprocess.main(["--dataset", "manifest", "--data-root", csv_path, "--output", out,
                            "--num-shards", "1", "--"] + IN_PROCESS)
    assert code == 0, capsys.readouterr().err
    counts = {}
    for split in datasets.get("manifest").split_names():
        files = glob.glob(os.path.join(out, split, "*.tfrecord.gz"))
        records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").map(schema.parse_example)
                       .as_numpy_iterator())
        counts[split] = len(records)
        assert {r["split"].decode() for r in records} == {split}
    assert counts == {"train": 8, "query": 2, "gallery": 4}


def test_preprocess_cli_reports_a_bad_manifest(tmp_path, capsys):
    csv_path = write_manifest(str(tmp_path / "cams"), ["x.jpg,1,one,visible,train"])
    code = preprocess.main(["--dataset", "manifest", "--data-root", csv_path, "--output", str(tmp_path / "o")])
    assert code == 2
    assert f"{csv_path}:2: field 'camera'" in capsys.readouterr().err


def test_a_spreadsheet_bom_before_the_header_is_accepted(tmp_path):
    folder = str(tmp_path / "cams")
    csv_path = write_manifest(folder, ["a.jpg,1,1,visible,query"], header="\ufeff" + HEADER)
    assert manifest_ds.read_manifest(csv_path)["query"][0].path == "a.jpg"
