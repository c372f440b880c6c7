"""The calibrated same-person threshold (kdem_tf.evaluation.match_threshold) against plain NumPy, and its path
through `kdem_tf.evaluate` (metrics.json, the plot)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from kdem_tf import evaluation as ev
from kdem_tf import datasets
from kdem_tf.evaluation import match_threshold as mt
from tests.test_evaluate_cli import check_png, run_cli, sysu  # noqa: F401  (the module fixture)
from kdem_tf.datasets import sysu as sysu_ds


def brute_force_threshold(genuine, impostor, fmr):
    """Every candidate threshold (each score and the float32 just above it), the smallest with
    mean(impostor >= t) <= fmr; its TMR."""
    scores = np.concatenate([genuine, impostor]).astype(np.float32)
    candidates = np.unique(np.concatenate([scores, np.nextafter(scores, np.float32(np.inf))]))
    for t in candidates:
        if np.mean(impostor >= t) <= fmr:
            return float(t), float(np.mean(genuine >= t)), float(np.mean(impostor >= t))
    raise AssertionError("no threshold")


@pytest.mark.parametrize("seed,fmr", [(0, 1e-2), (1, 1e-3), (2, 0.05)])
def test_threshold_at_fmr_matches_brute_force(seed, fmr):
    rng = np.random.default_rng(seed)
    genuine = np.tanh(rng.normal(1.0, 0.6, size=300)).astype(np.float32)
    impostor = np.tanh(rng.normal(0.0, 0.5, size=4000)).astype(np.float32)
    impostor[:20] = impostor[0]  # ties at the top are rejected together
    point = mt.threshold_at_fmr(genuine, impostor, fmr)
    threshold, tmr, achieved = brute_force_threshold(genuine, impostor, fmr)
    assert point["threshold"] == pytest.approx(threshold, abs=0)
    assert point["tmr"] == pytest.approx(tmr, abs=1e-12)
    assert point["achieved_fmr"] == pytest.approx(achieved, abs=1e-12) and achieved <= fmr
    assert (point["genuine_pairs"], point["impostor_pairs"]) == (300, 4000)


def test_threshold_input_errors_name_the_fault():
    with pytest.raises(mt.ThresholdError, match="false-match rate must be in"):
        mt.threshold_at_fmr([0.9], [0.1], 0.0)
    with pytest.raises(mt.ThresholdError, match="need genuine and impostor pairs, got 0"):
        mt.threshold_at_fmr([], [0.1], 0.01)


def test_pair_mask_follows_the_protocols():
    q_pids, q_cams = np.array([1, 1, 2]), np.array([3, 6, 3])
    g_pids, g_cams = np.array([1, 2, 1, 2]), np.array([2, 2, 3, 1])
    sysu_mask = datasets.get("sysu").ranking.pair_mask(q_pids, q_cams, g_pids, g_cams)
    expected = np.array([[q_cams[i] != 3 or g_cams[j] != 2 for j in range(4)] for i in range(3)])
    np.testing.assert_array_equal(sysu_mask, expected)
    llcm_mask = datasets.get("llcm").ranking.pair_mask(q_pids, q_cams, g_pids, g_cams)
    expected = np.array([[not (q_pids[i] == g_pids[j] and q_cams[i] == g_cams[j]) for j in range(4)]
                         for i in range(3)])
    np.testing.assert_array_equal(llcm_mask, expected)
    assert datasets.get("regdb").ranking.pair_mask(q_pids, q_cams, g_pids, g_cams).all()


def test_pair_scores_are_the_cosines_of_the_kept_pairs():
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(7, 8)) * 3.0
    q_pids, q_cams = rng.integers(0, 3, 5), np.array([3, 3, 1, 4, 6])
    g_pids, g_cams = rng.integers(0, 3, 7), rng.integers(1, 6, 7)
    genuine, impostor = mt.pair_scores(q, g, q_pids, q_cams, g_pids, g_cams, "sysu")
    want_genuine, want_impostor = [], []
    for i in range(5):
        for j in range(7):
            if q_cams[i] == 3 and g_cams[j] == 2:
                continue
            cosine = q[i] @ g[j] / np.linalg.norm(q[i]) / np.linalg.norm(g[j])
            (want_genuine if q_pids[i] == g_pids[j] else want_impostor).append(cosine)
    np.testing.assert_allclose(np.sort(genuine), np.sort(want_genuine), rtol=1e-6)
    np.testing.assert_allclose(np.sort(impostor), np.sort(want_impostor), rtol=1e-6)


def test_roc_curve_and_distribution():
    rng = np.random.default_rng(7)
    genuine, impostor = rng.uniform(0.2, 1, 500), rng.uniform(-1, 0.6, 3000)
    curve = mt.roc_curve(genuine, impostor, points=50)
    fmr, tmr = np.asarray(curve["fmr"]), np.asarray(curve["tmr"])
    assert len(fmr) <= 52 and fmr[0] == 1.0 and tmr[0] == 1.0
    assert np.all(np.diff(fmr) <= 0) and np.all(np.diff(tmr) <= 0)
    for t, f, r in zip(curve["threshold"], fmr, tmr):
        assert f == pytest.approx(np.mean(impostor >= t)) and r == pytest.approx(np.mean(genuine >= t))
    stats = mt.distribution(impostor)
    assert stats["count"] == 3000 and sum(stats["histogram"]["counts"]) == 3000
    assert stats["mean"] == pytest.approx(impostor.mean())


def test_evaluate_reports_the_threshold_of_the_protocol_pairs(sysu, tmp_path, capsys):  # noqa: F811
    root, features = sysu
    output, plots = tmp_path / "m.json", tmp_path / "plots"
    code, out, err = run_cli(["--dataset", "sysu", "--data-root", root, "--features", root.parent / "feats.npz",
                              "--trials", 3, "--output", output, "--plots", plots], capsys)
    assert code == 0, err
    report = json.loads(output.read_text())[mt.METRICS_KEY]
    genuine, impostor = [], []
    for trial in sysu_ds.trials(str(root), "all", 3):
        q = np.stack([features[p] for p in trial.query.paths])
        g = np.stack([features[p] for p in trial.gallery.paths])
        cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
        for i in range(len(q)):
            for j in range(len(g)):
                if trial.query.cams[i] == 3 and trial.gallery.cams[j] == 2:
                    continue
                (genuine if trial.query.pids[i] == trial.gallery.pids[j] else impostor).append(cos[i, j])
    genuine, impostor = np.float32(genuine), np.float32(impostor)
    assert (report["genuine"]["count"], report["impostor"]["count"]) == (len(genuine), len(impostor))
    assert [p["fmr"] for p in report["operating_points"]] == list(mt.FMR_TARGETS)
    for point in report["operating_points"]:
        threshold, tmr, _ = brute_force_threshold(genuine, impostor, point["fmr"])
        assert point["threshold"] == pytest.approx(threshold, abs=1e-6)
        assert point["tmr"] == pytest.approx(tmr, abs=1e-9)
    assert report["protocol"]["dataset"] == "sysu" and report["protocol"]["trials"] == [0, 1, 2]
    assert "same-person threshold" in out and "FMR 0.001" in out
    check_png(plots / "match_threshold.png")


def test_threshold_record_has_the_provenance(tmp_path):
    rng = np.random.default_rng(9)
    report = mt.threshold_report(rng.uniform(0.3, 1, 200), rng.uniform(-1, 0.7, 5000),
                                 protocol={"dataset": "sysu", "mode": "all"})
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"mAP": 50.0, "source": "/models/1", mt.METRICS_KEY: report}))
    record = mt.threshold_record(str(path), 1e-3)
    point = report["operating_points"][1]
    assert (record["threshold"], record["fmr"], record["tmr"]) == (point["threshold"], 1e-3, point["tmr"])
    assert record["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["source"]["file"] == str(path) and record["source"]["protocol"]["dataset"] == "sysu"
    assert record["source"]["model"] == "/models/1"
    with pytest.raises(mt.ThresholdError, match=r"has no fmr 0.05 \(has \[0.01, 0.001\]\)"):
        mt.threshold_record(str(path), 0.05)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"mAP": 50.0}))
    with pytest.raises(mt.ThresholdError, match=f"{old}: no 'match_threshold.operating_points'"):
        mt.threshold_record(str(old))
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(mt.ThresholdError, match=f"{broken}: not JSON"):
        mt.threshold_record(str(broken))
