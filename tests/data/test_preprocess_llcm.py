"""`preprocess --dataset llcm` writes LLCM's splits; the training-time LLCM evaluation on those
TFRecords gives the numbers of the raw-folder protocol."""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from kdem_tf import evaluation as ev
from kdem_tf.evaluation import records as record_evaluation
from kdem_tf.data import preprocess, schema
from kdem_tf.datasets import llcm as llcm_ds
from kdem_tf import datasets

IN_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def llcm_tfrecords(tmp_path_factory):
    base = tmp_path_factory.mktemp("llcm")
    root = llcm_ds.generate_synthetic(str(base / "raw"), identities=8, images_per_camera=1,
                                        image_size=(32, 16), progress=False)
    out = str(base / "tfrecords")
    assert preprocess.main(["--dataset", "llcm", "--data-root", root, "--output", out, "--num-shards", "1", "--"] + IN_PROCESS) == 0
    return root, out


def _read(out, split):
    files = glob.glob(os.path.join(out, split, "*.tfrecord.gz"))
    return list(tf.data.TFRecordDataset(files, compression_type="GZIP").map(schema.parse_example)
                .as_numpy_iterator())


def test_splits_and_modalities(llcm_tfrecords):
    root, out = llcm_tfrecords
    splits = preprocess.plan_splits("llcm", root)
    assert tuple(splits) == datasets.get("llcm").split_names()
    for split, modalities in (("train", {b"visible", b"infrared"}), ("test_nir", {b"infrared"}),
                              ("test_visible", {b"visible"})):
        records = _read(out, split)
        assert len(records) == len(splits[split]) and {r["modality"] for r in records} == modalities
    assert all(r["label"] == -1 for r in _read(out, "test_nir"))


def test_tfrecord_evaluation_equals_the_raw_folder_protocol(llcm_tfrecords):
    root, out = llcm_tfrecords
    rng = np.random.default_rng(0)
    sides = {}
    for split in ("test_nir", "test_visible"):
        records = sorted(_read(out, split), key=lambda r: r["path"])
        paths = [r["path"].decode() for r in records]
        pids = np.array([r["person_id"] for r in records])
        sides[split] = {"paths": paths, "pids": pids, "cams": np.array([r["camera"] for r in records]),
                        "features": np.eye(12)[pids % 12] + 0.8 * rng.normal(size=(len(paths), 12))}
    feature_of = {p: f for s in sides.values() for p, f in zip(s["paths"], s["features"])}
    splits = record_evaluation.load_eval_splits("llcm", out)
    record_trials = record_evaluation.record_trials("llcm", out, splits)
    got = record_evaluation.metrics_of(ev.run_trials(
        record_trials, lambda t: (np.stack([feature_of[p] for p in t.query.paths]),
                                  np.stack([feature_of[p] for p in t.gallery.paths])), "llcm"))
    results = ev.run_trials(llcm_ds.trials_from_folder(root, "i2v"),
                            lambda t: (np.stack([feature_of[p] for p in t.query.paths]),
                                       np.stack([feature_of[p] for p in t.gallery.paths])), "llcm")
    want = ev.summary(*ev.average_trials(results))
    assert {k: got[k] for k in want} == want
