"""Gallery index: embeds a gallery with the exported embedder and builds a ScaNN searcher.

    python -m serving.index --model MODEL_BASE --gallery DIR_OR_TFRECORDS --out INDEX_DIR
        [--modality visible] [--batch-size 64] [--retrieval-model OUT]

The gallery is a folder of images (one modality, `--modality`) or TFRecords in our
schema (a folder searched recursively for `*.tfrecord*`, or a glob pattern). Either way the
encoded bytes go to the embedder's `serving_default`, which decodes and resizes them with
the model's image contract (recorded in the manifest). Each
entry keeps its person id, camera, path and modality. Small galleries are searched
exactly (ScaNN brute force); from `BRUTE_FORCE_BELOW` entries on, a k-means tree +
anisotropic hashing + exact re-ordering, with parameters from `auto_params`.

INDEX_DIR (written to a temporary folder beside it, then renamed: `kdem_tf.artifacts.publish_folder`)::

    manifest.json    count, embedding_dim, model path + version, ScaNN parameters
    entries.npz      person_ids, cameras, paths, modalities (index-aligned)
    embeddings.npy   float32 [count, D]
    scann/           the ScaNN searcher (`searcher.serialize`)
"""
from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import time
from typing import Iterator, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from kdem_tf.artifacts import (INDEX_EMBEDDINGS_FILE, INDEX_ENTRIES_FILE, INDEX_MANIFEST_FILE, INDEX_SCANN_DIR,
                               publish_folder)
from kdem_tf.data import schema
from kdem_tf.datasets.files import IMAGE_EXTENSIONS

BRUTE_FORCE_BELOW = 20_000


@dataclasses.dataclass
class GalleryEntry:
    person_id: int
    camera: int
    path: str
    modality: str


# ----------------------------------------------------------------------------- gallery readers


def _folder_entry(relative: str, modality: str) -> GalleryEntry:
    """Id = the last all-digit folder of the path (SYSU: cam3/0001/x.jpg -> 1), camera = `camN` (-1 if none)."""
    parts = relative.split("/")
    digits = [p for p in parts[:-1] if p.isdigit()]
    cameras = [int(m.group(1)) for p in parts[:-1] for m in [re.fullmatch(r"cam(\d+)", p)] if m]
    return GalleryEntry(person_id=int(digits[-1]) if digits else -1,
                        camera=cameras[-1] if cameras else -1, path=relative, modality=modality)


def _tfrecord_files(gallery: str) -> List[str]:
    if os.path.isdir(gallery):
        files = glob.glob(os.path.join(gallery, "**", "*.tfrecord*"), recursive=True)
    else:
        files = tf.io.gfile.glob(gallery)
    return sorted(files)


def read_gallery(gallery: str, modality: str = schema.VISIBLE) -> Iterator[Tuple[bytes, GalleryEntry]]:
    """Yields (encoded image, entry) for a folder of images or TFRecords in our schema.

    Args:
        gallery: image folder, TFRecord folder, or TFRecord glob pattern.
        modality: modality of a folder's images (TFRecords carry their own).
    """
    if modality not in schema.MODALITIES:
        raise ValueError(f"modality must be one of {schema.MODALITIES}, got {modality!r}")
    records = _tfrecord_files(gallery)
    if records:
        for path in records:
            compression = "GZIP" if path.endswith(".gz") else ""
            dataset = tf.data.TFRecordDataset([path], compression_type=compression).batch(256)
            for batch in dataset.map(schema.parse_examples).as_numpy_iterator():
                for i in range(len(batch[schema.IMAGE])):
                    yield batch[schema.IMAGE][i], GalleryEntry(
                        person_id=int(batch[schema.PERSON_ID][i]), camera=int(batch[schema.CAMERA][i]),
                        path=batch[schema.PATH][i].decode(), modality=batch[schema.MODALITY][i].decode())
        return
    if not os.path.isdir(gallery):
        raise FileNotFoundError(f"{gallery}: neither an image folder nor TFRecords")
    names = []
    for root, _, files in os.walk(gallery):
        names += [os.path.relpath(os.path.join(root, f), gallery).replace(os.sep, "/")
                  for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise FileNotFoundError(f"{gallery}: no images ({', '.join(IMAGE_EXTENSIONS)}) and no TFRecords")
    for relative in sorted(names):
        with open(os.path.join(gallery, relative), "rb") as f:
            yield f.read(), _folder_entry(relative, modality)


# ----------------------------------------------------------------------------- ScaNN


def auto_params(num_items: int) -> dict:
    """ScaNN parameters from the gallery size.

    Below `BRUTE_FORCE_BELOW` exact search is fast enough. Above: sqrt(n) k-means
    spherical leaves (ScaNN's rule of thumb; spherical k-means suits unit-norm
    embeddings and dot products) of which 15% are searched (recall is bound by the
    partitioning: on 200k identity-clustered 2048-d embeddings, 4.5% of the leaves
    gave recall@10 0.91, 9% gave 0.95 and 18% gave 0.975), anisotropic hashing with 4 dims per 16-centre block
    (as accurate as 2 after re-ordering, and twice as fast) and exact re-ordering of
    the best 100 candidates. k-means and hashing train on samples (50k and 25k
    points): their cost grows with sample x leaves x dim.
    """
    if num_items < BRUTE_FORCE_BELOW:
        return {"mode": "brute_force"}
    num_leaves = int(round(math.sqrt(num_items)))
    return {"mode": "tree_ah", "num_leaves": num_leaves, "spherical": True,
            "leaves_to_search": max(8, int(round(num_leaves * 0.15))),
            "reorder": 100, "dims_per_block": 4, "anisotropic_quantization_threshold": 0.2,
            "training_sample_size": int(min(num_items, 50_000)),
            "ah_training_sample_size": int(min(num_items, 25_000))}


def scann_builder(builder, params: dict):
    """Applies `params` (see `auto_params`) to a pybind or TF ScaNN builder."""
    if params["mode"] == "brute_force":
        return builder.score_brute_force()
    if params["mode"] != "tree_ah":
        raise ValueError(f"unknown ScaNN mode {params['mode']!r}")
    return (builder.tree(num_leaves=params["num_leaves"], num_leaves_to_search=params["leaves_to_search"],
                         training_sample_size=params["training_sample_size"],
                         spherical=params.get("spherical", False))
            .score_ah(params["dims_per_block"],
                      anisotropic_quantization_threshold=params["anisotropic_quantization_threshold"],
                      training_sample_size=params.get("ah_training_sample_size", 100_000))
            .reorder(params["reorder"]))


def build_searcher(embeddings: np.ndarray, params: Optional[dict] = None, k: int = 10):
    """A pybind ScaNN searcher (dot product) over float32 [n, D] embeddings."""
    from scann.scann_ops.py import scann_ops_pybind
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    params = params or auto_params(len(embeddings))
    return scann_builder(scann_ops_pybind.builder(embeddings, k, "dot_product"), params).build()


def _load_searcher(scann_dir: str):
    """`scann_ops_pybind.load_searcher`, with the asset paths re-rooted at `scann_dir`.

    ScaNN writes absolute asset paths, which a rename of the index folder would break.
    """
    from google.protobuf import text_format
    from scann.scann_ops import scann_assets_pb2
    from scann.scann_ops.py import scann_ops_pybind
    with open(os.path.join(scann_dir, "scann_assets.pbtxt")) as f:
        assets = text_format.Parse(f.read(), scann_assets_pb2.ScannAssets())
    for asset in assets.assets:
        asset.asset_path = os.path.join(scann_dir, os.path.basename(asset.asset_path))
    return scann_ops_pybind.ScannSearcher(scann_ops_pybind.scann_pybind.ScannNumpy(scann_dir, str(assets)))


class GalleryIndex:
    """A loaded (or just built) gallery index.

    Args:
        searcher: pybind ScaNN searcher.
        entries: dict of index-aligned arrays person_ids, cameras, paths, modalities.
        embeddings: float32 [n, D].
        manifest: the manifest dict.
    """

    def __init__(self, searcher, entries: dict, embeddings: np.ndarray, manifest: dict):
        self.searcher = searcher
        self.entries = entries
        self.embeddings = embeddings
        self.manifest = manifest
        self.params = manifest["params"]

    def __len__(self) -> int:
        return len(self.entries["paths"])

    def search(self, queries: np.ndarray, k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
        """float32 [Q, D] -> (indices int [Q, k'], dot-product scores [Q, k']), k' = min(k, n), best first."""
        k = max(1, min(int(k), len(self)))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        pre = max(self.params.get("reorder", k), k) if self.params["mode"] == "tree_ah" else None
        indices, scores = self.searcher.search_batched(queries, final_num_neighbors=k,
                                                       pre_reorder_num_neighbors=pre)
        return np.asarray(indices, np.int64), np.asarray(scores, np.float32)

    def results(self, indices: np.ndarray, scores: np.ndarray) -> List[List[dict]]:
        """Ranked results as dicts {index, person_id, camera, path, modality, score}, one list per query."""
        e = self.entries
        return [[{"index": int(i), "person_id": int(e["person_ids"][i]), "camera": int(e["cameras"][i]),
                  "path": str(e["paths"][i]), "modality": str(e["modalities"][i]), "score": float(s)}
                 for i, s in zip(row_i, row_s)] for row_i, row_s in zip(indices, scores)]


def save_index(out: str, embeddings: np.ndarray, entries: List[GalleryEntry], params: dict,
               model_path: str = "", model_version: Optional[int] = None, searcher=None,
               image_contract: Optional[dict] = None, flip: bool = False) -> str:
    """Builds (unless given) and writes the searcher with its manifest to `out`, atomically.

    `image_contract`: the embedder's contract dict, recorded in the manifest (the pixels the
    gallery was embedded from: queries must be embedded under the same contract)."""
    if os.path.exists(out):
        raise FileExistsError(f"{out}: already exists")
    searcher = searcher or build_searcher(embeddings, params)

    def write(folder: str) -> None:
        os.makedirs(os.path.join(folder, INDEX_SCANN_DIR))
        searcher.serialize(os.path.join(folder, INDEX_SCANN_DIR))
        np.save(os.path.join(folder, INDEX_EMBEDDINGS_FILE), embeddings.astype(np.float32))
        np.savez(os.path.join(folder, INDEX_ENTRIES_FILE),
                 person_ids=np.array([e.person_id for e in entries], np.int64),
                 cameras=np.array([e.camera for e in entries], np.int64),
                 paths=np.array([e.path for e in entries], dtype=str),
                 modalities=np.array([e.modality for e in entries], dtype=str))
        manifest = {"format": 1, "count": len(entries), "embedding_dim": int(embeddings.shape[1]),
                    "model_path": os.path.abspath(model_path) if model_path else "",
                    "model_version": model_version, "params": params, "metric": "dot_product",
                    "image_contract": image_contract, "flip": bool(flip), "created": time.time()}
        with open(os.path.join(folder, INDEX_MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2)

    publish_folder(out, write)
    return out


def load_index(index_dir: str) -> GalleryIndex:
    """Loads an index written by `save_index` / `build_index`."""
    manifest_path = os.path.join(index_dir, INDEX_MANIFEST_FILE)
    with open(manifest_path) as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{manifest_path}: not a gallery index manifest (invalid JSON: {e}); "
                             f"rebuild the index with `python -m serving.index`") from None
    with np.load(os.path.join(index_dir, INDEX_ENTRIES_FILE)) as data:
        entries = {key: data[key] for key in data.files}
    embeddings = np.load(os.path.join(index_dir, INDEX_EMBEDDINGS_FILE), mmap_mode="r")
    return GalleryIndex(_load_searcher(os.path.join(index_dir, INDEX_SCANN_DIR)), entries, embeddings, manifest)


def embed_gallery(embedder, gallery: str, modality: str = schema.VISIBLE,
                  batch_size: int = 64, progress: bool = True, flip: bool = False) -> Tuple[np.ndarray, List[GalleryEntry]]:
    """Embeds every gallery image in batches -> (float32 [n, D], entries); flip: flip-averaged (kdem_tf.tta)."""
    embeddings, entries, batch = [], [], []

    def flush():
        embeddings.append(embedder.embed_bytes([b for b, _ in batch], [e.modality for _, e in batch], flip=flip))
        entries.extend(e for _, e in batch)
        bar.update(len(batch))
        batch.clear()

    bar = tqdm(desc="embedding gallery", unit="img", disable=not progress)
    for item in read_gallery(gallery, modality):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    if not entries:
        raise ValueError(f"{gallery}: empty gallery")
    return np.concatenate(embeddings).astype(np.float32), entries


def build_index(model: str, gallery: str, out: str, modality: str = schema.VISIBLE, batch_size: int = 64,
                params: Optional[dict] = None, progress: bool = True, flip: bool = False) -> GalleryIndex:
    """Embeds `gallery` with the exported embedder at `model` and writes the index to `out`.

    Args:
        model: TF Serving base path (highest version used) or a SavedModel folder.
        gallery: image folder, TFRecord folder or pattern (see `read_gallery`).
        out: index folder to create.
        modality: modality of a folder's images.
        batch_size: images per embedder call.
        params: ScaNN parameters; default `auto_params(gallery size)`.
        flip: embed the gallery with flip test-time augmentation (`serving_flip`); recorded in the
            manifest ("flip"), so that queries can be embedded the same way.
    """
    from serving.export.embedder import Embedder
    embedder = Embedder(model)
    embeddings, entries = embed_gallery(embedder, gallery, modality, batch_size, progress, flip)
    params = params or auto_params(len(entries))
    save_index(out, embeddings, entries, params, embedder.path, embedder.version,
               image_contract=embedder.contract.to_dict(), flip=flip)
    return load_index(out)
