"""kdem_tf.evaluation.variants: every result variant gets its own name and a label that carries its sampling."""
from __future__ import annotations

from kdem_tf import evaluate as cli
from kdem_tf.evaluation import variants as v
from kdem_tf.evaluation import tables
from kdem_tf import datasets
from kdem_tf.evaluation import EvalOptions

RERANK = "rerank(k1=20,k2=6,λ=0.3)"


def test_keys_keep_flip_and_rerank_apart():
    keys = {v.variant_key(), v.variant_key(flip=True), v.variant_key(rerank_label=RERANK),
            v.variant_key(flip=True, rerank_label=RERANK)}
    assert keys == {"plain", "flip", RERANK, f"flip+{RERANK}"}


def test_sampling_per_dataset_and_labels():
    label = lambda name, sampling=None: datasets.get(name).sampling_label(EvalOptions(sampling=sampling))  # noqa: E731
    assert [label("sysu"), label("sysu", "official"), label("regdb"), label("llcm"),
            label("manifest")] == ["agw", "official", "index", "deen", "single"]
    agw, official = v.describe("plain", "agw"), v.describe("plain", "official")
    assert agw["label"] == "plain, agw sampling" and official["label"] != agw["label"]
    assert v.describe(RERANK, "agw", rerank={"k1": 20})["rerank"] == {"k1": 20} and not agw["flip"]


def test_mean_table_rows_carry_sampling_and_flip():
    row = dict(rank1=50.0, rank5=60.0, rank10=70.0, rank20=80.0, mAP=40.0, mINP=30.0)
    means = {"plain": dict(row, **v.describe("plain", "official")),
             "flip": dict(row, mAP=41.0, **v.describe("flip", "official", flip=True))}
    lines = tables.format_variants("t", means).splitlines()
    assert lines[2].split()[-2:] == ["Sampling", "Flip"]
    assert lines[4].split()[0] == "plain" and lines[4].split()[-2:] == ["official", "no"]
    assert lines[5].split()[0] == "flip" and lines[5].split()[-2:] == ["official", "yes"] and "41.00" in lines[5]
