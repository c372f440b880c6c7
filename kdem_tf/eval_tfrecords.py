"""The standard protocols on preprocessed TFRecords (training-time and pipeline evaluation).

The TFRecords keep each image's dataset path, camera and identity, so the
protocol trials of `kdem_tf.evaluation` are rebuilt from them without the raw
folder: SYSU's single-shot gallery draw uses the same `random.Random(trial)`
stream over the same sorted file lists as `evaluation.sysu_gallery`, so the
numbers equal `python -m kdem_tf.evaluate` on the raw dataset. LLCM's draws come from
`kdem_tf.protocols.llcm` over the stored pools (default direction i2v), a manifest's one
trial from its query and gallery splits.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np

from kdem_tf import evaluation as ev
from kdem_tf.data.datasets import SYSU_INDOOR_VISIBLE_CAMERAS, SYSU_VISIBLE_CAMERAS

SYSU_MODE_CAMERAS = {"all": SYSU_VISIBLE_CAMERAS, "indoor": SYSU_INDOOR_VISIBLE_CAMERAS}


def embed_split(inference_model, data_dir: str, split: str, image_size, batch_size: int = 64) -> dict:
    """Embeds one split: {"features" [N, D], "paths", "pids", "cams"} in path order."""
    from kdem_tf.data import input_pipeline

    features, paths, pids, cams = [], [], [], []
    for batch in input_pipeline.eval_dataset(data_dir, split, image_size, batch_size):
        out = inference_model({"image": batch["image"], "modality": batch["modality"]}, training=False)
        features.append(np.asarray(out["embedding"], np.float32))
        paths += [p.decode() for p in batch["path"].numpy()]
        pids.append(batch["person_id"].numpy())
        cams.append(batch["camera"].numpy())
    order = np.argsort(np.array(paths, dtype=object), kind="stable")
    return {"features": np.concatenate(features)[order], "paths": [paths[i] for i in order],
            "pids": np.concatenate(pids)[order], "cams": np.concatenate(cams)[order]}


def sysu_query_order(paths: List[str]) -> np.ndarray:
    """Indices putting SYSU query paths in protocol order: id, then camera, then file name."""
    keys = [(p.split("/")[1], p.split("/")[0], p.split("/")[2]) for p in paths]
    return np.array(sorted(range(len(paths)), key=lambda i: keys[i]), dtype=np.int64)


def sysu_gallery_indices(paths: List[str], mode: str, trial: int) -> List[int]:
    """Single-shot gallery draw of one trial from a gallery pool, as `evaluation.sysu_gallery`."""
    by_folder: Dict[Tuple[int, int], List[Tuple[str, int]]] = defaultdict(list)
    for index, path in enumerate(paths):
        cam, pid, name = path.split("/")
        by_folder[(int(pid), int(cam[3:]))].append((name, index))
    rng = random.Random(trial)
    chosen = []
    for pid in sorted({pid for pid, _ in by_folder}):
        for cam in SYSU_MODE_CAMERAS[mode]:
            files = sorted(by_folder.get((pid, cam), []))
            if files:
                chosen.append(rng.choice(files)[1])
    return chosen


def _llcm_results(query: dict, gallery: dict, trials: int) -> List[ev.TrialResult]:
    """LLCM i2v trials: query = the embedded test_nir pool, gallery = draws from test_visible."""
    from kdem_tf.image_contract import INFRARED, VISIBLE
    from kdem_tf.protocols import llcm

    pools, rows = {}, {}
    for modality, side in ((INFRARED, query), (VISIBLE, gallery)):
        pools[modality] = [(int(p), int(c), path) for p, c, path in zip(side["pids"], side["cams"], side["paths"])]
        rows.update({path: (side, i) for i, path in enumerate(side["paths"])})
    results = []
    for trial in llcm.trials_from_pools(pools, "i2v", trials):
        q = np.array([rows[p][1] for p in trial.query.paths], np.int64)
        g = np.array([rows[p][1] for p in trial.gallery.paths], np.int64)
        cmc, mAP, mINP = ev.evaluate_features(query["features"][q], gallery["features"][g], trial.query.pids,
                                              trial.gallery.pids, trial.query.cams, trial.gallery.cams,
                                              protocol="llcm")
        results.append(ev.TrialResult(trial.trial, cmc, mAP, mINP, len(q), len(g)))
    return results


def evaluate_embedded(dataset: str, query: dict, gallery: dict, mode: str = "all", trials: int = 10) -> dict:
    """Protocol metrics (percent, averaged over trials) from embedded splits."""
    results = []
    if dataset == "llcm":
        results = _llcm_results(query, gallery, trials)
    elif dataset == "sysu":
        q = sysu_query_order(query["paths"])
        for trial in range(trials):
            g = np.array(sysu_gallery_indices(gallery["paths"], mode, trial), dtype=np.int64)
            cmc, mAP, mINP = ev.evaluate_features(
                query["features"][q], gallery["features"][g], query["pids"][q], gallery["pids"][g],
                query["cams"][q], gallery["cams"][g], protocol="sysu")
            results.append(ev.TrialResult(trial, cmc, mAP, mINP, len(q), len(g)))
    else:  # RegDB and a manifest: one query / gallery pair
        cmc, mAP, mINP = ev.evaluate_features(query["features"], gallery["features"], query["pids"],
                                              gallery["pids"], query["cams"], gallery["cams"],
                                              protocol="manifest" if dataset == "manifest" else "regdb")
        results.append(ev.TrialResult(0, cmc, mAP, mINP, len(query["pids"]), len(gallery["pids"])))
    out = ev.summary(*ev.average_trials(results))
    out["num_query"] = int(results[0].num_query)
    out["num_gallery"] = int(results[0].num_gallery)
    out["cmc"] = [float(v) for v in ev.average_trials(results)[0]]
    return out


def evaluate_model_on_tfrecords(inference_model, dataset: str, data_dir: str, image_size,
                                mode: str = "all", trials: int = 10) -> dict:
    """SYSU: infrared query split vs visible gallery draws; RegDB: visible → thermal of the trial."""
    if dataset in ("sysu", "manifest", "llcm"):  # LLCM: test_nir (query pool), test_visible
        from kdem_tf.data.schema import DATASET_SPLITS

        query_split, gallery_split = DATASET_SPLITS[dataset][1:]
        query = embed_split(inference_model, data_dir, query_split, image_size)
        gallery = embed_split(inference_model, data_dir, gallery_split, image_size)
    else:
        query = embed_split(inference_model, data_dir, "test_visible", image_size)
        gallery = embed_split(inference_model, data_dir, "test_thermal", image_size)
    return evaluate_embedded(dataset, query, gallery, mode, trials)
