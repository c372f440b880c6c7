"""Retrieval SavedModel: the embedder and the gallery's ScaNN index in one graph.

    export_retrieval_model(MODEL_BASE, INDEX_DIR, OUT)   # or: python -m serving.index ... --retrieval-model OUT

Signature `serving_default`: `image_bytes` string [N], `modality` string [N] and `k`
int32 scalar -> `gallery_ids` int64 [N, k], `cameras` int64 [N, k], `paths` string
[N, k], `indices` int32 [N, k] (rows of the index) and `scores` float32 [N, k] (dot
products, best first).

The searcher is the index's own ScaNN searcher: its serialized assets (config,
partitioner, hash codes, dataset) become variables of the SavedModel and ScaNN's
`TensorsToScann` op turns them into a searcher on the first call (cached by the op's
`shared_name`). This needs ScaNN's custom ops (`Scann>*`): the stock
`tensorflow_model_server` cannot load it, `serving.server` can (it imports
`scann.scann_ops`), as can a TF Serving build linked with ScaNN's ops.
"""
from __future__ import annotations

import json
import os
import uuid
from typing import Optional

import numpy as np
import tensorflow as tf
from scann.scann_ops.py import scann_ops  # registers the Scann>* ops

from kdem_tf.artifacts import (ASSETS_EXTRA_DIR, INDEX_ENTRIES_FILE, INDEX_MANIFEST_FILE, INDEX_SCANN_DIR,
                               RETRIEVAL_INFO_FILE, SAVED_MODEL_FILE, SERVING_SIGNATURE, publish_version,
                               resolve_version_dir, version_of)
from serving.export.saved_model import read_contract

# (file in the index's scann/ folder, dtype); missing assets become scalars, as ScaNN's own
# `scann_to_tensors` returns them.
_SCANN_ASSETS = (
    ("dataset.npy", np.float32), ("scann_config.pb", object), ("serialized_partitioner.pb", object),
    ("datapoint_to_token.npy", np.int32), ("ah_codebook.pb", object), ("hashed_dataset.npy", np.uint8),
    ("int8_dataset.npy", np.int8), ("int8_multipliers.npy", np.float32), ("dp_norms.npy", np.float32),
)


def scann_tensors(scann_dir: str) -> list:
    """The 9 inputs of ScaNN's TensorsToScann op, read from a pybind-serialized searcher folder."""
    tensors = []
    for name, dtype in _SCANN_ASSETS:
        path = os.path.join(scann_dir, name)
        if not os.path.exists(path):
            tensors.append(np.array(b"" if dtype is object else 0, dtype=dtype))
        elif name.endswith(".pb"):
            with open(path, "rb") as f:
                tensors.append(np.array([f.read()], dtype=object))
        else:
            tensors.append(np.load(path).astype(dtype))
    return tensors


class RetrievalModule(tf.Module):
    """Embedder SavedModel + ScaNN searcher state + gallery metadata.

    Args:
        embedder: a loaded embedder SavedModel (`tf.saved_model.load`).
        index_dir: a gallery index folder (`serving.index`).
    """

    def __init__(self, embedder, index_dir: str):
        super().__init__()
        with open(os.path.join(index_dir, INDEX_MANIFEST_FILE)) as f:
            manifest = json.load(f)
        with np.load(os.path.join(index_dir, INDEX_ENTRIES_FILE)) as entries:
            self.gallery_ids = tf.Variable(entries["person_ids"].astype(np.int64), trainable=False)
            self.cameras = tf.Variable(entries["cameras"].astype(np.int64), trainable=False)
            self.paths = tf.Variable(entries["paths"].astype(object), dtype=tf.string, trainable=False)
        self.embedder = embedder
        self.scann_state = [tf.Variable(t, trainable=False)
                            for t in scann_tensors(os.path.join(index_dir, INDEX_SCANN_DIR))]
        params = manifest["params"]
        self.count = int(manifest["count"])
        self.reorder = int(params.get("reorder", -1)) if params["mode"] == "tree_ah" else -1
        # One searcher per export: shared_name makes the op build it once and reuse it.
        self.shared_name = f"kdem_gallery_{uuid.uuid4().hex}"

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes"),
                                  tf.TensorSpec([None], tf.string, name="modality"),
                                  tf.TensorSpec([], tf.int32, name="k")])
    def search(self, image_bytes, modality, k):
        embedding = self.embedder.signatures[SERVING_SIGNATURE](image_bytes=image_bytes,
                                                                modality=modality)["embedding"]
        k = tf.clip_by_value(k, 1, self.count)
        pre_reorder = tf.maximum(k, self.reorder) if self.reorder > 0 else tf.constant(-1)
        handle = scann_ops.tensors_to_scann(*[v.read_value() for v in self.scann_state],
                                            shared_name=self.shared_name)
        indices, scores = scann_ops.ScannSearcher(handle).search_batched(
            embedding, final_num_neighbors=k, pre_reorder_num_neighbors=pre_reorder)
        return {"gallery_ids": tf.gather(self.gallery_ids, indices), "cameras": tf.gather(self.cameras, indices),
                "paths": tf.gather(self.paths, indices), "indices": indices, "scores": scores}


def export_retrieval_model(model: str, index_dir: str, out_base: str, version: Optional[int] = None,
                           model_version: Optional[int] = None) -> str:
    """Writes the retrieval SavedModel as `out_base/<version>/`, atomically.

    Args:
        model: the embedder's base path or SavedModel folder. Default version: the one the
            index was built with (from its manifest), else the highest.
        index_dir: gallery index folder.
        out_base: TF Serving base path of the retrieval model.
        version: version number under out_base; default max existing + 1.
        model_version: embedder version to use instead of the default.

    Returns:
        the written version folder.
    """
    with open(os.path.join(index_dir, INDEX_MANIFEST_FILE)) as f:
        manifest = json.load(f)
    if model_version is None and not os.path.exists(os.path.join(model, SAVED_MODEL_FILE)):
        model_version = manifest.get("model_version")
    embedder_dir = resolve_version_dir(model, model_version)
    module = RetrievalModule(tf.saved_model.load(embedder_dir), index_dir)
    info = {"embedder": os.path.abspath(embedder_dir), "embedder_version": version_of(embedder_dir),
            "index": os.path.abspath(index_dir), "count": module.count, "custom_ops": ["Scann"],
            "image_contract": read_contract(embedder_dir).to_dict()}

    def write(export_dir):
        tf.saved_model.save(module, export_dir, signatures={SERVING_SIGNATURE: module.search},
                            options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
        os.makedirs(os.path.join(export_dir, ASSETS_EXTRA_DIR), exist_ok=True)
        with open(os.path.join(export_dir, ASSETS_EXTRA_DIR, RETRIEVAL_INFO_FILE), "w") as f:
            json.dump(info, f, indent=2)

    return publish_version(write, out_base, version)
