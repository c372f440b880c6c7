"""Evaluation of a preprocessed dataset (TFRecords) through the one protocol implementation.

The TFRecords keep each image's dataset path, camera and identity, so the trials of
`kdem_tf.evaluation` (SYSU's query order and gallery draws, RegDB's lists) are rebuilt
from them without the raw folder, and the metrics come from `evaluation.run_trials`, the
code `python -m kdem_tf.evaluate --data-root` runs. Three callers:

- training-time evaluation (`kdem_tf.train`): a Keras inference model, images decoded,
  resized and normalised by the run's image contract (`evaluate_keras_model`);
- the TFX evaluator and `python -m kdem_tf.evaluate --tfrecords DIR --model M`: an exported
  SavedModel fed the stored encoded bytes through `serving_default` (`evaluate_saved_model`);
- `--tfrecords DIR --features F.npz`: features looked up by path (`record_trials`).

Differences from the raw folder: the SYSU gallery draw lists the files the TFRecords hold
(an image preprocessing skipped as corrupt is not a candidate), and a RegDB output holds the
one trial it was preprocessed for (`summary.json` settings.trial).
"""
from __future__ import annotations

import dataclasses

import json
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from kdem_tf import evaluation as ev
from kdem_tf.image_contract import INFRARED, MODALITIES, VISIBLE

# (query-side split, gallery-side split) written by `kdem_tf.data.preprocess` per dataset: the
# evaluation splits of kdem_tf.data.schema.DATASET_SPLITS (LLCM: the infrared pool first).
EVAL_SPLITS = {"sysu": ("query", "gallery"), "regdb": ("test_visible", "test_thermal"),
               "llcm": ("test_nir", "test_visible"), "manifest": ("query", "gallery")}
SUMMARY_FILE = "summary.json"


def load_eval_splits(dataset: str, tfrecord_dir: str, split_names: Optional[Sequence[str]] = None
                     ) -> Dict[str, object]:
    """The evaluation splits of a preprocessed dataset: {split name: input_pipeline.SplitArrays},
    query side first (SYSU: query, gallery; RegDB: test_visible, test_thermal; or `split_names`)."""
    from kdem_tf.data import input_pipeline

    if dataset not in EVAL_SPLITS:
        raise ev.EvaluationError(f"dataset must be one of {sorted(EVAL_SPLITS)}, got {dataset!r}")
    try:
        return {split: input_pipeline.load_split(tfrecord_dir, split)
                for split in (split_names or EVAL_SPLITS[dataset])}
    except input_pipeline.InputError as error:
        raise ev.EvaluationError(str(error)) from None


def regdb_trial_number(tfrecord_dir: str) -> int:
    """The RegDB trial a preprocessing output holds (summary.json settings.trial; 1 when not recorded)."""
    import tensorflow as tf

    path = f"{tfrecord_dir.rstrip('/')}/{SUMMARY_FILE}"
    if not tf.io.gfile.exists(path):
        return 1
    with tf.io.gfile.GFile(path) as f:
        try:
            return int(json.load(f).get("settings", {}).get("trial", 1))
        except (ValueError, AttributeError) as error:
            raise ev.EvaluationError(f"{path}: unreadable ({error})") from None


def record_trials(dataset: str, tfrecord_dir: str, splits: Dict[str, object], mode: str = "all",
                  trials: int = 10, multi_shot: bool = False, direction: Optional[str] = None) -> List[ev.Trial]:
    """The protocol trials of a preprocessed dataset (SYSU: `trials` gallery draws; RegDB: its one trial).

    `splits`: `load_eval_splits`' dict, query side (SYSU infrared, RegDB visible) first."""
    first, second = splits.values()
    if dataset == "sysu":
        return ev.sysu_trials_from_paths(list(first.paths), list(second.paths), mode, trials, multi_shot)
    if dataset == "llcm":
        from kdem_tf.protocols import llcm

        pools = {modality: [(int(p), int(c), path) for p, c, path in zip(a.person_ids, a.cameras, a.paths)]
                 for modality, a in ((INFRARED, first), (VISIBLE, second))}
        return llcm.trials_from_pools(pools, direction or "i2v", trials)
    if dataset == "manifest":
        from kdem_tf.protocols import manifest

        sides = [[_Record(path, int(pid), int(cam), MODALITIES[int(m)])
                  for path, pid, cam, m in zip(a.paths, a.person_ids, a.cameras, a.modalities)]
                 for a in (first, second)]
        return [ev.Trial(0, manifest._side(sides[0], f"{tfrecord_dir}: no query split"),
                         manifest._side(sides[1], f"{tfrecord_dir}: no gallery split"))]
    trial = regdb_trial_number(tfrecord_dir)
    sides = []
    for arrays in (first, second):
        # The published index files list identity after identity: (id, path) order follows them.
        order = sorted(range(len(arrays.paths)), key=lambda i: (int(arrays.person_ids[i]), arrays.paths[i]))
        sides.append(([arrays.paths[i] for i in order], arrays.person_ids[order]))
    return [ev.regdb_trial_from_records(trial, sides[0], sides[1], direction or "v2i")]


@dataclasses.dataclass(frozen=True)
class _Record:
    """One stored evaluation image as the manifest protocol reads it."""
    path: str
    person_id: int
    camera: int
    modality: str


def path_features(paths: Sequence[str], features: np.ndarray, source: str) -> Callable[[ev.Trial], Tuple]:
    """features_for(trial) → (query [Q, D], gallery [G, D]) looked up by dataset path."""
    from kdem_tf.evaluate import FeatureTable

    table = FeatureTable(paths, features, source)

    def features_for(trial: ev.Trial):
        return table.lookup(trial.query.paths, "query"), table.lookup(trial.gallery.paths, "gallery")
    return features_for


def metrics_of(results: Sequence[ev.TrialResult]) -> dict:
    """Percent metrics averaged over trials, with counts and the CMC curve (fractions)."""
    cmc, mAP, mINP = ev.average_trials(results)
    out = ev.summary(cmc, mAP, mINP)
    out["num_query"] = int(results[0].num_query)
    out["num_gallery"] = int(results[0].num_gallery)
    out["cmc"] = [float(v) for v in cmc]
    return out


def embed_keras(inference_model, tfrecord_dir: str, split: str, contract,
                batch_size: int = 64) -> Tuple[List[str], np.ndarray]:
    """(paths, [N, D] float32 embeddings) of one split with a Keras inference model; the images go
    through the image contract's decode → resize → normalise (`input_pipeline.eval_dataset`)."""
    from kdem_tf.data import input_pipeline

    features, paths = [], []
    for batch in input_pipeline.eval_dataset(tfrecord_dir, split, contract, batch_size):
        out = inference_model({"image": batch["image"], "modality": batch["modality"]}, training=False)
        features.append(np.asarray(out["embedding"], np.float32))
        paths += [p.decode() for p in batch["path"].numpy()]
    return paths, np.concatenate(features)


def evaluate_keras_model(inference_model, dataset: str, tfrecord_dir: str, contract, mode: str = "all",
                         trials: int = 10, distance: str = "cosine") -> dict:
    """Training-time evaluation: protocol metrics (percent) of a Keras inference model."""
    splits = load_eval_splits(dataset, tfrecord_dir)
    paths, features = [], []
    for split in splits:
        split_paths, split_features = embed_keras(inference_model, tfrecord_dir, split, contract)
        paths += split_paths
        features.append(split_features)
    features_for = path_features(paths, np.concatenate(features), f"{tfrecord_dir} (Keras embeddings)")
    trial_list = record_trials(dataset, tfrecord_dir, splits, mode, trials)
    return metrics_of(ev.run_trials(trial_list, features_for, dataset, distance))


def embed_saved_model(model_path: str, splits: Dict[str, object], batch_size: int = 64,
                      signature_name: str = "serving_default") -> Tuple[List[str], np.ndarray]:
    """(paths, [N, D]) of the given splits, their stored bytes fed to the SavedModel's `serving_default`
    (or `signature_name`, e.g. `serving_flip`)."""
    from kdem_tf.data import schema
    from kdem_tf.model_embedding import embed_encoded

    paths, images, modalities = [], [], []
    for arrays in splits.values():
        paths += list(arrays.paths)
        images += list(arrays.images)
        modalities += [schema.MODALITIES[m] for m in arrays.modalities]
    return paths, embed_encoded(model_path, images, modalities, batch_size, signature_name)


def evaluate_saved_model(model_path: str, dataset: str, tfrecord_dir: str, mode: str = "all",
                         trials: int = 10, distance: str = "cosine",
                         split_names: Optional[Sequence[str]] = None) -> dict:
    """The TFX evaluator's metrics (percent): an exported embedder on the evaluation splits."""
    splits = load_eval_splits(dataset, tfrecord_dir, split_names)
    paths, features = embed_saved_model(model_path, splits)
    features_for = path_features(paths, features, model_path)
    trial_list = record_trials(dataset, tfrecord_dir, splits, mode, trials)
    return metrics_of(ev.run_trials(trial_list, features_for, dataset, distance))
