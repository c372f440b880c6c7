"""End-to-end `python -m kdem_tf.evaluate` on tiny SYSU-MM01 and RegDB trees built in tmp_path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdem_tf import evaluate as cli
from kdem_tf.model_versions import resolve_saved_model
from benchmarks.agw_oracle import agw_eval_regdb, agw_eval_sysu
from tests.test_evaluation import agw_process_gallery_sysu, make_regdb, make_sysu
from kdem_tf.datasets import regdb as regdb_ds
from kdem_tf.datasets import sysu as sysu_ds
from kdem_tf.evaluation.embedding import embed_images

REPO = Path(__file__).resolve().parents[1]
KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def identity_features(paths, pid_of, dim=24, noise=1.1, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim))
    return np.stack([centres[pid_of(p) % 64] + noise * rng.normal(size=dim) for p in paths]).astype(np.float32)


def image_paths(root: Path, pattern: str):
    return sorted(str(p.relative_to(root)) for p in root.rglob(pattern))


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    root = make_sysu(tmp_path_factory.mktemp("sysu") / "SYSU", test_ids=tuple(range(1, 25, 2)), per_camera=3)
    paths = image_paths(root, "*.jpg")
    feats = identity_features(paths, lambda p: int(p.split("/")[1]))
    np.savez(root.parent / "feats.npz", paths=np.array(paths), features=feats)
    return root, dict(zip(paths, feats.astype(np.float64)))


@pytest.fixture(scope="module")
def regdb(tmp_path_factory):
    root = make_regdb(tmp_path_factory.mktemp("regdb") / "RegDB", ids=24, per_id=2, trials=(1, 2))
    paths = image_paths(root, "*.bmp")
    arrays = {}
    for t in (1, 2):  # one feature set per trial, as a per-trial RegDB model would give
        arrays[f"paths_trial{t}"] = np.array(paths)
        arrays[f"features_trial{t}"] = identity_features(paths, lambda p: int(p.split("/")[1]), seed=t)
    np.savez(root.parent / "feats.npz", **arrays)
    return root, arrays


def preprocess_test_splits(dataset: str, root: Path, out: Path) -> str:
    """The evaluation splits of a raw tree through the real Beam writer (two shards: not path order)."""
    from kdem_tf.data import preprocess

    if dataset == "sysu":
        query, gallery = sysu_ds.test_records(str(root))
        splits = {"query": query, "gallery": gallery}
    else:
        test = regdb_ds.records(str(root), "test", 1)
        splits = {"test_visible": test["visible"], "test_thermal": test["infrared"]}
    options = preprocess.local_pipeline_options(["--direct_running_mode=in_memory"])
    preprocess.run_preprocess(splits, str(root), str(out), num_shards=2, pipeline_options=options,
                              settings={"dataset": dataset, "trial": 1})
    return str(out)


@pytest.mark.parametrize("dataset", ["sysu", "regdb"])
def test_tfrecords_give_the_raw_folder_metrics(dataset, sysu, regdb, tmp_path, capsys):
    """--tfrecords DIR runs the raw folder's protocol: same trials, same features → same numbers."""
    root, _ = sysu if dataset == "sysu" else regdb
    tfrecords = preprocess_test_splits(dataset, root, tmp_path / "tfr")
    npz = root.parent / "feats.npz"
    extra = ["--trials", 10, "--mode", "indoor"] if dataset == "sysu" else ["--trials", 1]
    results = {}
    for source in (["--data-root", root], ["--tfrecords", tfrecords]):
        code, stdout, err = run_cli(["--dataset", dataset, *source, "--features", npz, *extra,
                                     "--output", tmp_path / "m.json"], capsys)
        assert code == 0, err
        results[source[0]] = json.loads((tmp_path / "m.json").read_text())
    raw, records = results["--data-root"], results["--tfrecords"]
    for key in KEYS + ("cmc", "per_trial", "trials", "query_count", "gallery_sizes"):
        assert raw[key] == records[key], key
    assert records["tfrecords"] == tfrecords and records["data_root"] is None


def run_cli(argv, capsys):
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_png(path: Path) -> None:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


def test_sysu_features_end_to_end_matches_agw(sysu, tmp_path, capsys):
    root, feature_of = sysu
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["--dataset", "sysu", "--data-root", root, "--features", root.parent / "feats.npz",
                               "--mode", "indoor", "--trials", 4, "--output", out / "m.json", "--plots", out], capsys)
    assert code == 0
    metrics = json.loads((out / "m.json").read_text())
    assert "Rank-1" in stdout and "mINP" in stdout and "Mean" in stdout
    # AGW's test.py pipeline on the same features: query loop, seeded gallery draws, -matmul distances
    q_paths = [f"cam{c}/{p:04d}/{n}" for p in range(1, 25, 2) for c in (3, 6)
               for n in sorted(os.listdir(root / f"cam{c}/{p:04d}"))]
    qf = np.stack([feature_of[p] for p in q_paths])
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    total = None
    for trial in range(4):
        g_paths = agw_process_gallery_sysu(str(root), "indoor", trial)
        gf = np.stack([feature_of[p] for p in g_paths])
        gf /= np.linalg.norm(gf, axis=1, keepdims=True)
        cmc, mAP, mINP = agw_eval_sysu(-np.matmul(qf, np.transpose(gf)),
                                       np.array([int(p[5:9]) for p in q_paths]), np.array([int(p[5:9]) for p in g_paths]),
                                       np.array([int(p[3]) for p in q_paths]), np.array([int(p[3]) for p in g_paths]))
        assert metrics["per_trial"][trial]["mAP"] == float(mAP) * 100
        assert metrics["per_trial"][trial]["gallery_size"] == len(g_paths)
        total = (cmc, mAP, mINP) if total is None else (total[0] + cmc, total[1] + mAP, total[2] + mINP)
    assert metrics["rank1"] == float(total[0][0] / 4) * 100 and metrics["rank10"] == float(total[0][9] / 4) * 100
    assert metrics["mAP"] == float(total[1] / 4) * 100 and metrics["mINP"] == float(total[2] / 4) * 100
    assert set(KEYS) <= set(metrics) and set(KEYS) <= set(metrics["per_trial"][0])
    assert (metrics["dataset"], metrics["mode"], metrics["trials"]) == ("sysu", "indoor", [0, 1, 2, 3])
    assert metrics["query_count"] == len(q_paths) and metrics["distance"] == "cosine"
    check_png(out / "cmc.png")
    check_png(out / "montage.png")
    # --mean-only: the table keeps its mean row only; the JSON still has every trial.
    code, brief, _ = run_cli(["--dataset", "sysu", "--data-root", root, "--features", root.parent / "feats.npz",
                              "--mode", "indoor", "--trials", 4, "--output", out / "brief.json", "--mean-only"], capsys)
    rows = [line.split()[0] for line in brief.splitlines() if line[:1].isdigit() or line.startswith("Mean")]
    assert code == 0 and rows == ["Mean"], brief
    assert json.loads((out / "brief.json").read_text())["per_trial"] == metrics["per_trial"]
    assert f"{metrics['mAP']:.2f}" in brief


def test_regdb_per_trial_features_i2v(regdb, tmp_path, capsys):
    root, arrays = regdb
    code, stdout, _ = run_cli(["--dataset", "regdb", "--data-root", root, "--features", root.parent / "feats.npz",
                               "--direction", "i2v", "--trials", 2, "--distance", "euclidean",
                               "--output", tmp_path / "m.json", "--plots", tmp_path], capsys)
    assert code == 0 and "RegDB thermal to visible" in stdout
    metrics = json.loads((tmp_path / "m.json").read_text())
    for t in (1, 2):
        index = {p: i for i, p in enumerate(arrays[f"paths_trial{t}"])}
        feats = arrays[f"features_trial{t}"].astype(np.float64)
        lists = {n: [line.split() for line in (root / f"idx/test_{n}_{t}.txt").read_text().splitlines()]
                 for n in ("visible", "thermal")}
        qf = feats[[index[p] for p, _ in lists["thermal"]]]
        gf = feats[[index[p] for p, _ in lists["visible"]]]
        dist = np.linalg.norm(qf[:, None] - gf[None], axis=2)
        cmc, mAP, _ = agw_eval_regdb(dist, np.array([int(l) for _, l in lists["thermal"]]),
                                     np.array([int(l) for _, l in lists["visible"]]))
        assert metrics["per_trial"][t - 1]["rank1"] == pytest.approx(float(cmc[0]) * 100, abs=1e-9)
        assert metrics["per_trial"][t - 1]["mAP"] == pytest.approx(float(mAP) * 100, abs=1e-9)
    assert metrics["direction"] == "i2v" and metrics["trials"] == [1, 2] and metrics["gallery_sizes"] == [48, 48]
    check_png(tmp_path / "cmc.png")
    check_png(tmp_path / "montage.png")


def build_embedder(path: Path) -> None:
    """A real SavedModel with the embedder contract: mean RGB of the resized image + modality flag."""
    import tensorflow as tf

    class Embedder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
                                      tf.TensorSpec([None], tf.string, name="modality")])
        def serve(self, image_bytes, modality):
            def one(data):
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
                return tf.reduce_mean(tf.image.resize(tf.cast(image, tf.float32), (16, 8)), axis=[0, 1])
            rgb = tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([3], tf.float32))
            flag = tf.cast(tf.equal(modality, "infrared"), tf.float32)[:, None] * 10.0
            return {"embedding": tf.concat([rgb, flag], axis=1)}

    module = Embedder()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def test_model_run_folder_end_to_end(sysu, tmp_path, capsys):
    root, _ = sysu
    build_embedder(tmp_path / "run" / "export" / "3")
    records = [("cam1/0001/0001.jpg", "visible"), ("cam3/0003/0002.jpg", "infrared")]
    emb = embed_images(str(tmp_path / "run"), str(root), records, batch_size=1)
    for (path, _), row in zip(records, emb):
        np.testing.assert_allclose(row[:3], np.asarray(Image.open(root / path).convert("RGB"), float).mean((0, 1)), atol=3.0)
    assert emb.shape == (2, 4) and emb[1, 3] == 10.0 and emb[0, 3] == 0.0
    code, stdout, _ = run_cli(["--dataset", "sysu", "--data-root", root, "--model", tmp_path / "run", "--trials", 2,
                               "--batch-size", 16, "--output", tmp_path / "m.json"], capsys)
    assert code == 0 and json.loads((tmp_path / "m.json").read_text())["source"] == str(tmp_path / "run")
    with pytest.raises(cli.ev.EvaluationError, match="no SavedModel"):
        resolve_saved_model(str(tmp_path))


def test_model_per_trial_regdb(regdb, tmp_path, capsys):
    root, _ = regdb
    for t in (1, 2):  # RegDB trains one model per trial: '{trial}' in --model picks it
        build_embedder(tmp_path / f"run_t{t}" / "inference_model")
    code, stdout, _ = run_cli(["--dataset", "regdb", "--data-root", root, "--model", tmp_path / "run_t{trial}",
                               "--trials", 2, "--output", tmp_path / "m.json"], capsys)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert code == 0 and metrics["trials"] == [1, 2] and metrics["query_count"] == 48


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case", ["nan", "rows", "missing", "duplicate", "dims", "no_features"])
def test_bad_features_exit_2_with_one_line(case, sysu, tmp_path, capsys):
    root, feature_of = sysu
    paths = np.array(sorted(feature_of))
    feats = np.stack([feature_of[p] for p in paths])
    arrays = {"paths": paths, "features": feats}
    expect = {"nan": "1 feature rows hold NaN or inf", "rows": "paths but", "missing": "5 of 96 trial 0 query",
              "duplicate": "1 duplicate paths", "dims": "different dims", "no_features": "no 'features'"}[case]
    if case == "nan":
        feats[5, 2] = np.inf
    elif case == "rows":
        arrays["paths"] = paths[:-1]
    elif case == "missing":
        keep = np.array([not p.startswith("cam6/0005/") for p in paths])
        arrays = {"paths": paths[keep], "features": feats[keep]}
    elif case == "duplicate":
        arrays["paths"] = np.concatenate([paths[:-1], paths[:1]])
    elif case == "dims":
        arrays["features_trial0"], arrays["paths_trial0"] = feats[:, :5], paths
    else:
        arrays = {"paths": paths, "embeddings": feats}
    npz = write_npz(tmp_path / "bad.npz", **arrays)
    code, _, err = run_cli(["--dataset", "sysu", "--data-root", root, "--features", npz, "--trials", 1], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expect in err, err
    if case == "missing":
        assert "'cam6/0005/0001.jpg'" in err and "query" in err


def test_protocol_errors_exit_2(regdb, tmp_path, capsys):
    root, _ = regdb
    npz = root.parent / "feats.npz"
    code, _, err = run_cli(["--dataset", "regdb", "--data-root", root, "--features", npz, "--trials", 3], capsys)
    assert code == 2 and "trial 3" in err and "test_visible_3.txt" in err and err.count("\n") == 1
    empty = tmp_path / "SYSU"  # test ids with infrared images only: the gallery is empty
    for cam in range(1, 7):
        (empty / f"cam{cam}").mkdir(parents=True)
    for cam in (3, 6):
        Image.new("RGB", (8, 16)).save(_mkdir(empty / f"cam{cam}/0001") / "0001.jpg")
    (empty / "exp").mkdir()
    (empty / "exp/test_id.txt").write_text("1\n")
    code, _, err = run_cli(["--dataset", "sysu", "--data-root", empty, "--features", npz, "--trials", 1], capsys)
    assert code == 2 and "empty SYSU gallery" in err


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_module_entry_point_reports_one_line(sysu, tmp_path):
    root, _ = sysu
    bad = write_npz(tmp_path / "bad.npz", paths=np.array(["cam3/0001/0001.jpg"]), features=np.ones((1, 4)))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # a user's default environment
    proc = subprocess.run([sys.executable, "-m", "kdem_tf.evaluate", "--dataset", "sysu", "--data-root", str(root),
                           "--features", str(bad), "--trials", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "have no features" in proc.stderr


def test_rerank_rows_are_their_own_rows(sysu, tmp_path, capsys):
    root, feature_of = sysu
    npz = root.parent / "feats.npz"
    label = "rerank(k1=20,k2=6,λ=0.3)"
    code, stdout, _ = run_cli(["--dataset", "sysu", "--data-root", root, "--features", npz, "--trials", 2,
                               "--rerank", "--output", tmp_path / "m.json"], capsys)
    assert code == 0
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert list(metrics["variants"]) == ["plain", label] and metrics["rerank"] == {"k1": 20, "k2": 6, "lambda": 0.3}
    assert metrics["gallery_sampling"] == "agw" and "agw gallery sampling" in stdout
    plain, reranked = metrics["variants"]["plain"], metrics["variants"][label]
    assert plain["rerank"] is None and reranked["rerank"] == metrics["rerank"] and reranked["variant"] == label
    assert all(plain[k] == metrics[k] for k in KEYS)  # the top-level numbers stay the plain ones
    # each trial re-ranked on its own features (Euclidean on L2-normalised), then the SYSU camera rules
    from kdem_tf.evaluation import reranking as rr
    for t, trial in enumerate(sysu_ds.trials(str(root), "all", 2)):
        qf = np.stack([feature_of[p] for p in trial.query.paths])
        gf = np.stack([feature_of[p] for p in trial.gallery.paths])
        cmc, mAP, mINP = sysu_ds.eval_sysu(rr.TrialReranker(rr.RerankParams())(qf, gf), trial.query.pids,
                                          trial.gallery.pids,
                                          trial.query.cams, trial.gallery.cams)
        row = reranked["per_trial"][t]
        assert (row["trial"], row["rank1"], row["mAP"], row["mINP"]) == (t, float(cmc[0]) * 100, mAP * 100,
                                                                         mINP * 100)
    assert reranked["mAP"] != plain["mAP"]
    # stdout: the plain table, the re-ranked table, one labelled mean row per variant, the threshold
    tables = stdout.split("\n\n")
    assert len(tables) == 4 and tables[3].startswith("same-person threshold") and tables[0].splitlines()[0].endswith("| plain") and label not in tables[0]
    assert tables[1].splitlines()[0].endswith(f"| {label} on euclidean between L2-normalised features")
    assert f"{reranked['mAP']:.2f}" in tables[1]
    means = {line.split()[0]: line.split()[1:] for line in tables[2].splitlines()[4:]}
    assert means["plain"][4] == f"{plain['mAP']:.2f}" and means[label][4] == f"{reranked['mAP']:.2f}"


def test_rerank_params_flag(sysu, regdb, tmp_path, capsys):
    root, _ = sysu
    npz = root.parent / "feats.npz"
    code, stdout, _ = run_cli(["--dataset", "sysu", "--data-root", root, "--features", npz, "--trials", 1,
                               "--rerank-params", "5,2,0.5", "--output", tmp_path / "m.json"], capsys)
    metrics = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert code == 0 and list(metrics["variants"]) == ["plain", "rerank(k1=5,k2=2,λ=0.5)"]
    assert metrics["rerank"] == {"k1": 5, "k2": 2, "lambda": 0.5} and "rerank(k1=5,k2=2,λ=0.5)" in stdout
    code, stdout, _ = run_cli(["--dataset", "sysu", "--data-root", root, "--features", npz, "--trials", 1,
                               "--output", tmp_path / "plain.json"], capsys)
    metrics = json.loads((tmp_path / "plain.json").read_text(encoding="utf-8"))
    assert list(metrics["variants"]) == ["plain"] and metrics["rerank"] is None and "rerank(" not in stdout
    regdb_root, _ = regdb  # RegDB: per-trial features, re-ranked per trial too
    code, stdout, _ = run_cli(["--dataset", "regdb", "--data-root", regdb_root, "--features",
                               regdb_root.parent / "feats.npz", "--trials", 2, "--rerank",
                               "--output", tmp_path / "regdb.json"], capsys)
    metrics = json.loads((tmp_path / "regdb.json").read_text(encoding="utf-8"))
    assert code == 0 and [r["trial"] for r in metrics["variants"]["rerank(k1=20,k2=6,λ=0.3)"]["per_trial"]] == [1, 2]
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["--dataset", "sysu", "--data-root", str(root), "--features", str(npz),
                        "--rerank-params", "20,6"])
    assert exit_info.value.code == 2 and "k1,k2,lambda" in capsys.readouterr().err


def test_table_separates_the_mean_from_trials_and_a_lone_mean_row_once():
    from kdem_tf.evaluation.tables import format_table

    row = {k: 50.0 for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")}
    separators = lambda text: sum(1 for line in text.splitlines() if set(line) == {"-"})  # noqa: E731
    assert separators(format_table("t", [("1", row), ("Mean", row)])) == 3
    assert separators(format_table("t", [("Mean", row)])) == 2  # --mean-only: no doubled rule
