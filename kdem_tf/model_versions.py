"""The model-version folder rule, one place for every stage: TF Serving's base path of all-digit
version folders (`BASE/1/`, `BASE/2/`, ...), and where a SavedModel lies in a run or export folder.

`serving.export` (publishing), `serving.versions` (the server's watcher), the demo and
`kdem_tf.evaluate --model` all call these; local paths and gfile URIs (gs://...) both work.
"""
from __future__ import annotations

from typing import List


def list_versions(model_base: str) -> List[int]:
    """Sorted version numbers under a TF Serving base path (all-digit folder names only)."""
    import tensorflow as tf

    base = model_base.rstrip("/")
    if not tf.io.gfile.isdir(base):
        return []
    names = (name.strip("/") for name in tf.io.gfile.listdir(base))
    return sorted(int(name) for name in names if name.isdigit() and tf.io.gfile.isdir(f"{base}/{name}"))


def resolve_saved_model(model_path: str) -> str:
    """The SavedModel folder of `model_path`: itself, or RUN/export/ or RUN/inference_model/
    of a training run folder (in each, the folder itself or its highest numbered version)."""
    import tensorflow as tf

    from kdem_tf.evaluation import EvaluationError

    base = model_path.rstrip("/")
    for folder in (base, f"{base}/export", f"{base}/inference_model"):
        if tf.io.gfile.exists(f"{folder}/saved_model.pb"):
            return folder
        for version in reversed(list_versions(folder)):
            if tf.io.gfile.exists(f"{folder}/{version}/saved_model.pb"):
                return f"{folder}/{version}"
    raise EvaluationError(f"{model_path}: no SavedModel (saved_model.pb) there, nor in export/ or "
                          f"inference_model/ below it (or a numbered version folder inside those)")
