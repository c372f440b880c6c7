"""Loads an exported embedder SavedModel and runs it from Python (index builder, server, benchmarks).

In the export room because the index builder (`serving.export.gallery_index`) runs it at export
time; the server (`serving.server.versions`) loads each served version with it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from kdem_tf.artifacts import (FLIP_IMAGES_SIGNATURE, FLIP_SIGNATURE, IMAGES_SIGNATURE, SERVING_SIGNATURE,
                               resolve_version_dir, version_of)
from kdem_tf.image_contract import ImageContract
from serving.export.saved_model import read_contract, read_info


def decode_one(image_bytes, contract: ImageContract):
    """One encoded image -> float32 [H, W, 3] RGB 0..255, decoded and resized exactly as the
    SavedModel's `serving_default` does (the same contract, the same ops), so that the server can
    check (and decode) each request's images before they join a batch: one bad image then fails
    only its own request."""
    return contract.decode(image_bytes)


def load_saved_model(path: str):
    """tf.saved_model.load, with an error that names the folder when it holds no loadable SavedModel."""
    try:
        return tf.saved_model.load(path)
    except Exception as e:  # DecodeError, OSError, tf.errors.*: TF's messages do not name the folder
        cause = " ".join(str(e).split())[:300] or type(e).__name__
        raise ValueError(f"{path}: not a loadable SavedModel ({type(e).__name__}: {cause})") from e


class Embedder:
    """An exported embedder SavedModel, loaded once.

    Args:
        model: TF Serving base path or SavedModel folder (see `kdem_tf.artifacts.resolve_version_dir`).
        version: a specific version of a base path.
    """

    def __init__(self, model: str, version: Optional[int] = None):
        self.path = resolve_version_dir(model, version)
        self.version = version_of(self.path)
        self.saved_model = load_saved_model(self.path)
        self.signatures = dict(self.saved_model.signatures)
        info = read_info(self.path)
        images_fn = self.signatures[IMAGES_SIGNATURE]
        spec = images_fn.structured_input_signature[1]["images"]
        self.contract = read_contract(self.path, fallback_size=spec.shape[1:3])
        self.image_size = self.contract.image_size
        self.embedding_dim = int(info.get("embedding_dim") or
                                 images_fn.structured_outputs["embedding"].shape[-1])
        self._decode = tf.function(lambda image_bytes: decode_one(image_bytes, self.contract),
                                   input_signature=[tf.TensorSpec([], tf.string)])

    def _signature(self, name: str):
        if name not in self.signatures:
            hint = " (exported before flip test-time augmentation existed: export it again)" \
                if name in (FLIP_SIGNATURE, FLIP_IMAGES_SIGNATURE) else ""
            raise KeyError(f"{self.path}: the SavedModel has no {name!r} signature "
                           f"(it has {sorted(self.signatures)}){hint}")
        return self.signatures[name]

    def embed_bytes(self, image_bytes: Sequence[bytes], modalities: Sequence[str], flip: bool = False) -> np.ndarray:
        """Encoded images + "visible"/"infrared" -> float32 [N, D] via `serving_default`
        (`serving_flip` with flip=True: flip test-time augmentation, kdem_tf.tta)."""
        out = self._signature(FLIP_SIGNATURE if flip else SERVING_SIGNATURE)(
            image_bytes=tf.constant(list(image_bytes), tf.string), modality=tf.constant(list(modalities), tf.string))
        return out["embedding"].numpy()

    def embed_images(self, images: np.ndarray, modalities: Sequence[str], flip: bool = False) -> np.ndarray:
        """float32 [N, H, W, 3] in 0..255 -> float32 [N, D] via `embed_images` (`embed_images_flip`)."""
        out = self._signature(FLIP_IMAGES_SIGNATURE if flip else IMAGES_SIGNATURE)(
            images=tf.convert_to_tensor(images, tf.float32), modality=tf.constant(list(modalities), tf.string))
        return out["embedding"].numpy()

    def decode(self, image_bytes: bytes) -> np.ndarray:
        """One encoded image -> float32 [H, W, 3] (raises tf.errors.InvalidArgumentError when not an image)."""
        return self._decode(tf.constant(image_bytes)).numpy()
