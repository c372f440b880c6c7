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

import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from kdem_tf.artifacts import SERVING_SIGNATURE
from kdem_tf import datasets
from kdem_tf import evaluation as ev
from kdem_tf.datasets.base import SplitSide
from kdem_tf.evaluation.features import path_features
from kdem_tf.image_contract import MODALITIES

SUMMARY_FILE = "summary.json"


def eval_split_names(dataset: str) -> tuple:
    """(query-side split, gallery-side split) a preprocessed dataset holds (`Dataset.eval_splits`)."""
    try:
        return datasets.get(dataset).eval_splits
    except KeyError as error:
        raise ev.EvaluationError(error.args[0]) from None


def load_eval_splits(dataset: str, tfrecord_dir: str, split_names: Optional[Sequence[str]] = None
                     ) -> Dict[str, object]:
    """The evaluation splits of a preprocessed dataset: {split name: input_pipeline.SplitArrays},
    query side first (the dataset's `eval_splits`, or `split_names`)."""
    from kdem_tf.data import input_pipeline

    names = split_names or eval_split_names(dataset)
    try:
        return {split: input_pipeline.load_split(tfrecord_dir, split) for split in names}
    except input_pipeline.InputError as error:
        raise ev.EvaluationError(str(error)) from None


def preprocessing_settings(tfrecord_dir: str) -> dict:
    """The settings a preprocessing output recorded (summary.json "settings"; {} when absent)."""
    import tensorflow as tf

    path = f"{tfrecord_dir.rstrip('/')}/{SUMMARY_FILE}"
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        try:
            settings = json.load(f).get("settings", {})
        except (ValueError, AttributeError) as error:
            raise ev.EvaluationError(f"{path}: unreadable ({error})") from None
    if not isinstance(settings, dict):
        raise ev.EvaluationError(f"{path}: 'settings' is not an object")
    return settings


def record_trials(dataset: str, tfrecord_dir: str, splits: Dict[str, object],
                  options: Optional[ev.EvalOptions] = None) -> List[ev.Trial]:
    """The protocol trials of a preprocessed dataset (`Dataset.trials_from_records`).

    `splits`: `load_eval_splits`' dict, query side first."""
    sides = tuple(SplitSide(a.paths, a.person_ids, a.cameras, [MODALITIES[int(m)] for m in a.modalities])
                  for a in splits.values())
    owner = datasets.get(dataset)
    options = owner.check_options(options or ev.EvalOptions())
    return owner.trials_from_records(sides, options, preprocessing_settings(tfrecord_dir), tfrecord_dir)


def metrics_of(results: Sequence[ev.TrialResult]) -> dict:
    """Percent metrics averaged over trials, with counts and the CMC curve (fractions)."""
    cmc, mAP, mINP = ev.average_trials(results)
    out = ev.summary(cmc, mAP, mINP)
    out["num_query"] = int(results[0].num_query)
    out["num_gallery"] = int(results[0].num_gallery)
    out["num_trials"] = len(results)
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


def evaluate_keras_model(inference_model, dataset: str, tfrecord_dir: str, contract,
                         options: Optional[ev.EvalOptions] = None, distance: str = "cosine") -> dict:
    """Training-time evaluation: protocol metrics (percent) of a Keras inference model."""
    splits = load_eval_splits(dataset, tfrecord_dir)
    paths, features = [], []
    for split in splits:
        split_paths, split_features = embed_keras(inference_model, tfrecord_dir, split, contract)
        paths += split_paths
        features.append(split_features)
    features_for = path_features(paths, np.concatenate(features), f"{tfrecord_dir} (Keras embeddings)")
    trial_list = record_trials(dataset, tfrecord_dir, splits, options)
    return metrics_of(ev.run_trials(trial_list, features_for, dataset, distance))


def embed_saved_model(model_path: str, splits: Dict[str, object], batch_size: int = 64,
                      signature_name: str = SERVING_SIGNATURE) -> Tuple[List[str], np.ndarray]:
    """(paths, [N, D]) of the given splits, their stored bytes fed to the SavedModel's `serving_default`
    (or `signature_name`, e.g. `serving_flip`)."""
    from kdem_tf.data import schema
    from kdem_tf.evaluation.embedding import embed_encoded

    paths, images, modalities = [], [], []
    for arrays in splits.values():
        paths += list(arrays.paths)
        images += list(arrays.images)
        modalities += [schema.MODALITIES[m] for m in arrays.modalities]
    return paths, embed_encoded(model_path, images, modalities, batch_size, signature_name)


def evaluate_saved_model(model_path: str, dataset: str, tfrecord_dir: str,
                         options: Optional[ev.EvalOptions] = None, distance: str = "cosine",
                         split_names: Optional[Sequence[str]] = None) -> dict:
    """The TFX evaluator's metrics (percent): an exported embedder on the evaluation splits."""
    splits = load_eval_splits(dataset, tfrecord_dir, split_names)
    paths, features = embed_saved_model(model_path, splits)
    features_for = path_features(paths, features, model_path)
    trial_list = record_trials(dataset, tfrecord_dir, splits, options)
    return metrics_of(ev.run_trials(trial_list, features_for, dataset, distance))
