"""Flip test-time augmentation: one definition, used by the export, the evaluator and the gallery index.

An image's flip-averaged embedding is L2(e(x) + e(flip(x))): the mean of its embedding and
its horizontal mirror's (e = the model's L2-normalised embedding), normalised again
(as CAJ and DEEN evaluate, which add the two and compare by cosine). Exported SavedModels
carry it as the `serving_flip` signature (bytes in, like `serving_default`) and
`embed_images_flip` (decoded images in); results computed with it are their own rows,
labelled `flip` (or `flip+rerank(...)`).
"""
from __future__ import annotations

import numpy as np

from kdem_tf.artifacts import FLIP_IMAGES_SIGNATURE, FLIP_SIGNATURE  # noqa: F401  (owned by artifacts)

FLIP = "flip"


def flip_label(variant: str, plain: str = "plain") -> str:
    """The row label of a variant computed on flip-averaged embeddings: plain → flip, X → flip+X."""
    return FLIP if variant == plain else f"{FLIP}+{variant}"


def combine_flip(embedding: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """NumPy: L2(e(x) + e(flip(x))) row by row ([N, D] each)."""
    total = np.asarray(embedding, np.float64) + np.asarray(flipped, np.float64)
    norm = np.sqrt(np.maximum((total * total).sum(axis=1, keepdims=True), 1e-24))
    return (total / norm).astype(np.float32)


def tf_combine_flip(embedding, flipped):
    """TensorFlow: the same as `combine_flip`, inside a graph."""
    import tensorflow as tf

    return tf.math.l2_normalize(tf.cast(embedding, tf.float32) + tf.cast(flipped, tf.float32), axis=-1)


def tf_flip_images(images):
    """[N, H, W, C] → the horizontal mirrors."""
    import tensorflow as tf

    return tf.reverse(images, axis=[2])
