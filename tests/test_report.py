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


def _curve_pixels(path: str, colour: str = "#1f77b4") -> np.ndarray:
    """[rows, cols] of the pixels in a curve's colour (matplotlib's first colour, C0)."""
    rgb = np.asarray(Image.open(path).convert("RGB"), np.int32)
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return np.argwhere(np.abs(rgb - target).max(axis=2) <= 12)


def test_the_evaluation_curve_is_drawn_where_its_values_are(tmp_path):
    # Drawn content, not colour counts: the mAP curve (C0) goes up in the image when mAP goes up,
    # and a history with the values reversed draws it the other way round.
    rising = [{"epoch": e, "eval": {"mAP": m, "rank1": 50.0}} for e, m in enumerate((5.0, 30.0, 60.0, 90.0))]
    falling = [{"epoch": r["epoch"], "eval": {"mAP": 95.0 - r["eval"]["mAP"], "rank1": 50.0}} for r in rising]
    slopes = []
    for name, history in (("rising", rising), ("falling", falling)):
        pixels = _curve_pixels(report.plot_evaluation(history, str(tmp_path / f"{name}.png")))
        assert len(pixels) > 100, name  # a line with markers, not a legend swatch alone
        left, right = pixels[:, 1].min(), pixels[:, 1].max()
        width = right - left
        # Mean row of the curve's left and right quarters (image rows grow downwards).
        left_row = pixels[pixels[:, 1] < left + width / 4, 0].mean()
        right_row = pixels[pixels[:, 1] > right - width / 4, 0].mean()
        slopes.append(left_row - right_row)
    assert slopes[0] > 20 and slopes[1] < -20, slopes
