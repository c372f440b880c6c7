"""Where a SavedModel lies in a run or export folder (`kdem_tf.evaluate --model`).

The version-folder rule itself (TF Serving's all-digit `BASE/1/`, `BASE/2/`, ... in numeric order)
is `kdem_tf.artifacts.list_versions`; local paths and gfile URIs (gs://...) both work.
"""
from __future__ import annotations

from kdem_tf.artifacts import SAVED_MODEL_FILE, list_versions


def resolve_saved_model(model_path: str) -> str:
    """The SavedModel folder of `model_path`: itself, or RUN/export/ or RUN/inference_model/
    of a training run folder (in each, the folder itself or its highest numbered version)."""
    import tensorflow as tf

    from kdem_tf.evaluation import EvaluationError

    base = model_path.rstrip("/")
    for folder in (base, f"{base}/export", f"{base}/inference_model"):
        if tf.io.gfile.exists(f"{folder}/{SAVED_MODEL_FILE}"):
            return folder
        for version in reversed(list_versions(folder)):
            if tf.io.gfile.exists(f"{folder}/{version}/{SAVED_MODEL_FILE}"):
                return f"{folder}/{version}"
    raise EvaluationError(f"{model_path}: no SavedModel (saved_model.pb) there, nor in export/ or "
                          f"inference_model/ below it (or a numbered version folder inside those)")
