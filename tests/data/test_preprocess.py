"""Beam preprocessing: generator → readers → Beam → TFRecords → parser, for both layouts."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from kdem_tf.data import preprocess, schema, synthetic
from kdem_tf.datasets import sysu as sysu_ds
from kdem_tf.datasets import regdb as regdb_ds

ORIGINAL_SIZE = (40, 20)  # synthetic images are written at this size; nothing may resize them
IN_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _read(output_dir: str, split: str) -> list:
    files = sorted(glob.glob(os.path.join(output_dir, split, f"{split}-*.tfrecord.gz")))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").map(schema.parse_example)
    return list(dataset.as_numpy_iterator())


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    base = tmp_path_factory.mktemp("sysu")
    root = sysu_ds.generate_synthetic(str(base / "raw"), identities=8, images_per_camera=2,
                                   image_size=ORIGINAL_SIZE, progress=False)
    corrupt = os.path.join(root, "cam1", f"{sysu_ds.read_ids(root, 'train')[0]:04d}", "0001.jpg")
    with open(corrupt, "wb") as f:
        f.write(b"\xff\xd8 this is not a JPEG")
    out = str(base / "tfrecords")
    splits = preprocess.plan_splits("sysu", root)
    summary = preprocess.run_preprocess(splits, root, out, num_shards=2,
                                        pipeline_options=preprocess.local_pipeline_options(IN_PROCESS))
    return root, out, splits, summary, os.path.relpath(corrupt, root)


def test_sysu_round_trip(sysu):
    root, out, splits, summary, corrupt = sysu
    assert os.path.exists(os.path.join(out, preprocess.SUCCESS_MARKER))
    for split in ("train", "query", "gallery"):
        examples = _read(out, split)
        expected = {r.path: r for r in splits[split] if r.path != corrupt}
        assert {e["path"].decode() for e in examples} == set(expected)
        for e in examples:
            record = expected[e["path"].decode()]
            assert (e["person_id"], e["label"], e["camera"]) == (record.person_id, record.label, record.camera)
            assert e["modality"].decode() == record.modality and e["split"].decode() == split
            with open(os.path.join(root, record.path), "rb") as f:
                assert e["image"] == f.read()  # the original bytes, not a resized re-encoding
            assert (e["height"], e["width"]) == ORIGINAL_SIZE
        assert summary["splits"][split]["images"] == len(expected)
        assert summary["splits"][split]["reencoded_png"] == 0
    assert "original encoded bytes" in summary["stored_images"]
    assert {e["modality"].decode() for e in _read(out, "query")} == {"infrared"}
    assert {e["modality"].decode() for e in _read(out, "gallery")} == {"visible"}


def test_no_identity_in_train_and_test(sysu):
    _, out, _, _, _ = sysu
    train_ids = {e["person_id"] for e in _read(out, "train")}
    test_ids = {e["person_id"] for e in _read(out, "query")} | {e["person_id"] for e in _read(out, "gallery")}
    assert train_ids and test_ids and not train_ids & test_ids


def test_corrupt_image_is_skipped_and_reported(sysu):
    root, out, _, summary, corrupt = sysu
    assert [s["path"] for s in summary["skipped"]] == [corrupt]
    assert summary["skipped"][0]["reason"]  # names the decoder's complaint
    with open(os.path.join(out, preprocess.SUMMARY_FILE)) as f:
        assert json.load(f)["skipped"][0]["path"] == corrupt
    assert summary["images_written"] == sum(len(v) for v in preprocess.plan_splits("sysu", root).values()) - 1


def test_every_shard_exists_and_rerun_is_byte_identical(sysu, tmp_path):
    root, out, splits, _, _ = sysu
    for split in splits:
        assert len(glob.glob(os.path.join(out, split, "*.tfrecord.gz"))) == 2
    again = str(tmp_path / "again")
    preprocess.run_preprocess(splits, root, again, num_shards=2,
                              pipeline_options=preprocess.local_pipeline_options(IN_PROCESS))
    for path in sorted(glob.glob(os.path.join(out, "*", "*.tfrecord.gz"))):
        twin = os.path.join(again, os.path.relpath(path, out))
        with open(path, "rb") as a, open(twin, "rb") as b:
            assert tf.io.decode_compressed(a.read(), "GZIP").numpy() == tf.io.decode_compressed(b.read(), "GZIP").numpy()


def test_existing_output_is_not_overwritten_without_flag(sysu):
    root, out, splits, _, _ = sysu
    with pytest.raises(FileExistsError, match="already holds a complete"):
        preprocess.run_preprocess(splits, root, out)


def test_failed_run_leaves_no_complete_looking_output(sysu, tmp_path, monkeypatch):
    root, _, splits, _, _ = sysu
    out = str(tmp_path / "crashed")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after the Beam job")

    monkeypatch.setattr(preprocess, "_summarise", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        preprocess.run_preprocess(splits, root, out, num_shards=1,
                                  pipeline_options=preprocess.local_pipeline_options(IN_PROCESS))
    assert not os.path.exists(out)  # only the staging folder exists, named .tmp-*
    assert [n for n in os.listdir(tmp_path) if n.startswith("crashed.tmp-")]


def test_regdb_round_trip_multiprocess_cli(tmp_path, capsys):
    """The CLI with the multi-process local runner passed through as a Beam flag (no Prism download)."""
    root = regdb_ds.generate_synthetic(str(tmp_path / "raw"), identities=6, images_per_camera=2, progress=False)
    out = str(tmp_path / "tfrecords")
    code = preprocess.main(["--dataset", "regdb", "--data-root", root, "--output", out, "--trial", "3",
                            "--beam-arg=--direct_running_mode=multi_processing"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test_thermal" in printed and "images/s" in printed
    test = regdb_ds.records(root, "test", 3)
    for split, modality in (("test_visible", "visible"), ("test_thermal", "infrared")):
        examples = _read(out, split)
        assert sorted(e["path"].decode() for e in examples) == sorted(r.path for r in test[modality])
    train = _read(out, "train")
    assert {e["modality"].decode() for e in train} == {"visible", "infrared"}
    assert sorted({int(e["label"]) for e in train}) == list(range(3))
    assert not {e["person_id"] for e in train} & {e["person_id"] for e in _read(out, "test_visible")}


def test_default_options_set_the_runner_explicitly():
    options = preprocess.local_pipeline_options([]).get_all_options()
    assert options["runner"] == "DirectRunner" and options["direct_running_mode"] == "in_memory"
    assert options["direct_num_workers"] == 1
    chosen = preprocess.local_pipeline_options(["--direct_running_mode=multi_processing"]).get_all_options()
    assert chosen["direct_running_mode"] == "multi_processing" and chosen["direct_num_workers"] == (os.cpu_count() or 1)


def test_lost_records_fail_the_job_and_publish_nothing(sysu, tmp_path, monkeypatch):
    root, _, splits, _, _ = sysu
    out = str(tmp_path / "lossy")
    real = preprocess._summarise

    def lose_one(*args, **kwargs):  # as if the runner had dropped one gallery record
        summary = real(*args, **kwargs)
        summary["splits"]["gallery"]["images"] -= 1
        return summary

    monkeypatch.setattr(preprocess, "_summarise", lose_one)
    with pytest.raises(preprocess.PreprocessError, match="split 'gallery': .* the Beam runner lost records"):
        preprocess.run_preprocess(splits, root, out, num_shards=1,
                                  pipeline_options=preprocess.local_pipeline_options(IN_PROCESS))
    assert not os.path.exists(out)


def test_cli_reports_broken_layout(tmp_path, capsys):
    code = preprocess.main(["--dataset", "sysu", "--data-root", str(tmp_path / "nowhere"), "--output",
                            str(tmp_path / "out")])
    assert code == 2
    assert "nowhere/exp/test_id.txt: missing split file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_tfx_layout_names_split_folders(sysu, tmp_path):
    root, _, splits, _, _ = sysu
    out = str(tmp_path / "artifact")
    preprocess.run_preprocess({"query": splits["query"]}, root, out, num_shards=1,
                              pipeline_options=preprocess.local_pipeline_options(IN_PROCESS), tfx_layout=True)
    assert glob.glob(os.path.join(out, "Split-query", "query-00000-of-00001.tfrecord.gz"))
    assert np.all([p.endswith(".gz") for p in glob.glob(os.path.join(out, "Split-query", "*"))])


def _encoded(image, **save) -> bytes:
    import io
    buffer = io.BytesIO()
    image.save(buffer, **save)
    return buffer.getvalue()


def test_originals_are_kept_and_undecodable_formats_become_lossless_png():
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (30, 14, 3), dtype=np.uint8)
    for fmt in ("PNG", "BMP", "JPEG"):
        data = _encoded(Image.fromarray(pixels), format=fmt)
        stored = preprocess.original_image(data)
        assert stored.data == data and not stored.reencoded and (stored.height, stored.width) == (30, 14)
    # CMYK JPEG (TF would misread the channels) and TIFF (TF cannot decode): PNG of PIL's RGB pixels
    for image, save in ((Image.fromarray(pixels).convert("CMYK"), {"format": "JPEG"}),
                        (Image.fromarray(pixels), {"format": "TIFF"})):
        data = _encoded(image, **save)
        stored = preprocess.original_image(data)
        assert stored.reencoded and stored.data != data and (stored.height, stored.width) == (30, 14)
        with Image.open(__import__("io").BytesIO(data)) as original:
            expected = np.asarray(original.convert("RGB"))
        np.testing.assert_array_equal(tf.io.decode_png(stored.data, channels=3).numpy(), expected)
    with pytest.raises(Exception):
        preprocess.original_image(b"\xff\xd8 not an image")
