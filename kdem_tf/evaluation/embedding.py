"""Embeddings of encoded images by an exported kdem-tf embedder: a SavedModel (or a run folder,
see `kdem_tf.model_versions.resolve_saved_model`) or a per-modality TFLite folder.

Used by `kdem_tf.evaluate --model` (image files) and `kdem_tf.evaluation.records` (TFRecord bytes).
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, List, Sequence, Tuple

import numpy as np

from kdem_tf.evaluation.trials import EvaluationError
from kdem_tf import tta
from kdem_tf.artifacts import SERVING_SIGNATURE
from kdem_tf.model_versions import resolve_saved_model


def embed_images(model_path: str, data_root: str, records: Sequence, batch_size: int = 64,
                 signature_name: str = SERVING_SIGNATURE) -> np.ndarray:
    """Embeds dataset image files with an exported kdem-tf embedder.

    Contract of the model: a TF SavedModel (or a run folder, see `resolve_saved_model`)
    whose `serving_default` signature takes `image_bytes` (tf.string [N], encoded
    JPEG/PNG/BMP file contents) and `modality` (tf.string [N], "visible" or "infrared")
    and returns `embedding` (float [N, D]). The file bytes are sent unchanged: decoding,
    resizing and normalisation happen inside the model (its image contract).

    Args:
        records: [N] (relative_path, modality) pairs, or objects with .path and .modality.
        batch_size: images per signature call.
    Returns:
        [N, D] float32 embeddings in the order of `records`.
    """
    pairs = [(r.path, r.modality) if hasattr(r, "path") else (r[0], r[1]) for r in records]
    batches = (([_read_image_bytes(data_root, path) for path, _ in pairs[start:start + batch_size]],
                [m for _, m in pairs[start:start + batch_size]]) for start in range(0, len(pairs), batch_size))
    return _embed_batches(model_path, batches, len(pairs), signature_name)


def embed_encoded(model_path: str, images: Sequence[bytes], modalities: Sequence[str],
                  batch_size: int = 64, signature_name: str = SERVING_SIGNATURE) -> np.ndarray:
    """Like `embed_images`, for encoded images already in memory (e.g. the bytes a TFRecord stores)."""
    if len(images) != len(modalities):
        raise EvaluationError(f"embed_encoded: {len(images)} images but {len(modalities)} modalities")
    batches = ((list(images[start:start + batch_size]), list(modalities[start:start + batch_size]))
               for start in range(0, len(images), batch_size))
    return _embed_batches(model_path, batches, len(images), signature_name)


def _embed_batches(model_path: str, batches: Iterable[Tuple[List[bytes], List[str]]], total: int,
                   signature_name: str = SERVING_SIGNATURE) -> np.ndarray:
    """Runs a bytes-in signature (`serving_default`, or `serving_flip` for flip test-time
    augmentation) of the SavedModel at `model_path` on (image bytes, modalities) batches."""
    import tensorflow as tf
    from tqdm import tqdm

    if not total:
        raise EvaluationError("embed_images: no images to embed")
    from kdem_tf.evaluation import tflite_embedder
    if tflite_embedder.is_tflite_dir(model_path):  # per-modality TFLite models (python -m serving.export --tflite)
        return tflite_embedder.embed_batches(model_path, batches, total, signature_name == tta.FLIP_SIGNATURE,
                                             EvaluationError)
    folder = resolve_saved_model(model_path)
    signatures = tf.saved_model.load(folder).signatures
    signature = signatures.get(signature_name)
    if signature is None:
        hint = " (exported before flip test-time augmentation existed: export it again)" \
            if signature_name == tta.FLIP_SIGNATURE else ""
        raise EvaluationError(f"{folder}: SavedModel has no {signature_name!r} signature (it has "
                                 f"{sorted(signatures)}){hint}")
    out = []
    with tqdm(total=total, desc="embedding", unit="img", file=sys.stderr) as bar:
        for images, modalities in batches:
            result = signature(image_bytes=tf.constant(images, tf.string), modality=tf.constant(modalities, tf.string))
            if "embedding" not in result:
                raise EvaluationError(f"{folder}: {signature_name} returns {sorted(result)}, not 'embedding'")
            emb = np.asarray(result["embedding"])
            if emb.ndim != 2 or len(emb) != len(images):
                raise EvaluationError(f"{folder}: embedding shape {emb.shape}, expected [{len(images)}, D]")
            out.append(emb.astype(np.float32))
            bar.update(len(images))
    return np.concatenate(out)


def _read_image_bytes(data_root: str, rel_path: str) -> bytes:
    import tensorflow as tf

    full = os.path.join(data_root, rel_path) if "://" not in data_root else f"{data_root.rstrip('/')}/{rel_path}"
    try:
        with tf.io.gfile.GFile(full, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise EvaluationError(f"{full}: image not found") from None
