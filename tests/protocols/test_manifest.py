"""The manifest protocol against a per-query re-implementation of torchreid's eval_market1501 rules
(torchreid/metrics/rank.py), plus mINP as the AGW survey defines it; and the CLI end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kdem_tf import evaluate as cli
from kdem_tf import evaluation as ev
from tests.data.test_manifest import write_manifest
from kdem_tf.datasets import manifest as manifest_ds


def ref_eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """eval_market1501 step by step, with each valid query's INP added."""
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_AP, all_INP, num_valid_q = [], [], [], 0.0
    for q_idx in range(num_q):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][np.invert(remove)]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        last = np.max(np.where(raw_cmc == 1))
        all_INP.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_valid_q += 1.0
        tmp_cmc = np.asarray([x / (i + 1.0) for i, x in enumerate(raw_cmc.cumsum())]) * raw_cmc
        all_AP.append(tmp_cmc.sum() / raw_cmc.sum())
    all_cmc = np.asarray(all_cmc).astype(np.float32).sum(0) / num_valid_q
    return all_cmc, np.mean(all_AP), np.mean(all_INP)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_matches_torchreid_rules(seed):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, 8, 30), rng.integers(0, 10, 45)
    q_cams, g_cams = rng.integers(1, 4, 30), rng.integers(1, 4, 45)
    dist = np.round(rng.random((30, 45)), 1)  # many ties: both sides must break them the same way
    ours = ev.evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20, protocol="manifest",
                            chunk_bytes=45 * 80 * 7)  # a few rows a chunk
    ref = ref_eval_market1501(dist, q_pids, g_pids, q_cams, g_cams, 20)
    np.testing.assert_array_equal(ours[0], ref[0])
    np.testing.assert_allclose(ours[1:], ref[1:], rtol=1e-12)
    # the same-camera rule matters here: without it the numbers differ
    kept_all = ev.evaluate_rank(dist, q_pids, g_pids, np.zeros(30), np.ones(45), protocol="manifest")
    assert not np.isclose(kept_all[1], ref[1])


def test_cli_on_a_manifest_with_mixed_modalities(tmp_path, capsys):
    rng = np.random.default_rng(3)
    lines = [f"train/{p}_{m}.jpg,{p},1,{m},train" for p in (100, 101) for m in ("visible", "infrared")]
    for pid in range(1, 23):
        for k, (cam, modality) in enumerate(((1, "infrared"), (2, "visible"), (3, "infrared"), (1, "visible"))):
            lines.append(f"c{cam}/{pid}_{k}.jpg,{pid},{cam},{modality},{'query' if k == 0 else 'gallery'}")
    csv_path = write_manifest(str(tmp_path / "own"), lines)
    rows = [line.split(",") for line in lines if not line.endswith("train")]
    centres = rng.normal(size=(23, 8))
    feats = np.stack([centres[int(r[1])] + 1.5 * rng.normal(size=8) for r in rows])
    np.savez(tmp_path / "f.npz", paths=np.array([r[0] for r in rows]), features=feats)
    out = tmp_path / "m.json"
    code = cli.main(["--dataset", "manifest", "--data-root", csv_path, "--features", str(tmp_path / "f.npz"),
                     "--distance", "euclidean", "--output", str(out)])
    assert code == 0, capsys.readouterr().err
    q = [i for i, r in enumerate(rows) if r[4] == "query"]
    g = [i for i, r in enumerate(rows) if r[4] == "gallery"]
    dist = np.linalg.norm(feats[q][:, None] - feats[g][None], axis=2)
    pids, cams = np.array([int(r[1]) for r in rows]), np.array([int(r[2]) for r in rows])
    cmc, mAP, mINP = ref_eval_market1501(dist, pids[q], pids[g], cams[q], cams[g], 20)
    metrics = json.loads(out.read_text())
    np.testing.assert_allclose(metrics["cmc"], cmc * 100.0, rtol=1e-6)
    np.testing.assert_allclose([metrics["mAP"], metrics["mINP"]], [mAP * 100, mINP * 100], rtol=1e-9)
    assert metrics["num_trials"] == 1 and metrics["gallery_sizes"] == [66]
    printed = capsys.readouterr().out
    assert "query 22 infrared | gallery 66 visible+infrared" in printed


def test_trial_keeps_each_lines_modality(tmp_path):

    csv_path = write_manifest(str(tmp_path / "own"), ["a.jpg,1,1,visible,query", "b.jpg,1,2,infrared,query",
                                                      "c.jpg,1,3,visible,gallery"])
    trial, = manifest_ds.trials(csv_path)
    assert trial.query.path_modalities() == ("visible", "infrared")
    assert trial.gallery.path_modalities() == ("visible",) and trial.gallery.modality == "visible"


def test_cli_names_a_bad_line(tmp_path, capsys):
    csv_path = write_manifest(str(tmp_path / "own"), ["a.jpg,1,1,visible,query", "b.jpg,1,1,thermal,gallery"])
    code = cli.main(["--dataset", "manifest", "--data-root", csv_path, "--features", str(tmp_path / "x.npz")])
    assert code == 2
    assert f"{csv_path}:3: field 'modality'" in capsys.readouterr().err
