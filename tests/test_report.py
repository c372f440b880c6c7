"""kdem_tf.report: the run report's figures and page from a real history file."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from kdem_tf import report


def _history():
    rows = [{"epoch": 0, "step": 0, "eval": {"mAP": 9.5, "rank1": 4.0}}]
    for epoch in range(1, 5):
        rows.append({"epoch": epoch, "step": 2 * epoch, "loss": 5.0 - epoch, "id_loss": 4.0 - 0.5 * epoch,
                     "wrt_loss": 1.0 / epoch, "div_loss": -0.1, "con_loss": 0.2,
                     "mi_v_mean": 0.5 + 0.1 * epoch, "mi_v_std": 0.05})
    rows[-1]["eval"] = {"mAP": 52.0, "rank1": 41.0}
    return rows


def test_figures_are_real_pngs(tmp_path):
    history = _history()
    for name, path in (("losses", report.plot_losses(history, str(tmp_path / "l.png"))),
                       ("evaluation", report.plot_evaluation(history, str(tmp_path / "e.png"))),
                       ("factors", report.plot_factors(history, np.linspace(0, 1, 30), str(tmp_path / "f.png")))):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 300, name
            # Not a blank canvas: the curves add colours other than white.
            assert len(image.convert("RGB").getcolors(1 << 20)) > 10, name


def test_no_figure_without_the_data(tmp_path):
    assert report.plot_evaluation([{"epoch": 1, "loss": 1.0}], str(tmp_path / "e.png")) is None
    assert report.plot_losses([{"epoch": 0, "eval": {"mAP": 1.0}}], str(tmp_path / "l.png")) is None
    assert not os.listdir(tmp_path)


def test_report_page_lists_every_figure_and_the_settings(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _history()))
    (run / "config.yaml").write_text("seed: 0\n")
    np.save(run / "influence_factors.npy", np.full(16, 0.7))
    page = report.write_report(str(tmp_path / "out"), str(run), {"rank1": 41.0, "mAP": 52.0, "cmc": [0.4, 0.6, 0.8]})
    text = open(page).read()
    for png in ("losses.png", "evaluation.png", "influence_factors.png", "cmc.png"):
        assert f"src='{png}'" in text and os.path.exists(tmp_path / "out" / png), png
    assert "seed: 0" in text and "52.00" in text


def test_metrics_table_keeps_every_variant_apart_and_labelled():
    metrics = {"rank1": 40.0, "mAP": 30.0, "gallery_sampling": "official", "variants": {
        "plain": {"variant": "plain", "gallery_sampling": "official", "flip": False, "rank1": 40.0,
                  "rank10": 70.0, "rank20": 80.0, "mAP": 30.0, "mINP": 20.0},
        "rerank(k1=20,k2=6,λ=0.3)": {"variant": "rerank(k1=20,k2=6,λ=0.3)", "gallery_sampling": "official",
                                     "flip": False, "rank1": 45.0, "rank10": 72.0, "rank20": 81.0,
                                     "mAP": 41.5, "mINP": 33.0}}}
    rows = report.variant_rows(metrics, "this run")
    assert [(r[1], r[2], r[3]) for r in rows] == [("plain", "official", False),
                                                  ("rerank(k1=20,k2=6,λ=0.3)", "official", False)]
    table = report.metrics_table(metrics, "this run")
    ours = [row for row in table.split("<tr") if "class='ours'" in row]
    assert len(ours) == 2 and "41.50" in ours[1] and "41.50" not in ours[0] and "rerank(" in ours[1]
    # an older metrics.json without variants is one plain row
    assert [r[1] for r in report.variant_rows({"rank1": 1.0, "mAP": 2.0}, "x")] == ["plain"]
