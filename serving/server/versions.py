"""Model versions on disk: the loaded versions of each served model name, for `serving.server`.

- `LoadedVersion`: one loaded SavedModel, warmed up by `replay_warmup` before it is served (TF
  Serving's `assets.extra/tf_serving_warmup_requests`, serving.export.warmup): at start before the
  server reports ready, for a new version before it is swapped in. A warm-up file that is not such
  records, or a record the model refuses, fails the version's load (as in TF Serving).
- `ServedModel`: the versions of one model name: the highest served, a failed one tried again once
  its folder changed (`folder_fingerprint`), a rollback when the served version's folder is deleted.
- `index_version`: the version a gallery index is searched with, refused (`IndexMismatch`, naming
  both) when the index's version is missing or its dimension or image contract differ.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from kdem_tf.artifacts import SERVING_SIGNATURE, list_versions, version_of
from serving.export.embedder import Embedder
from serving.export.warmup import WarmupError, read_warmup_requests
from serving.server.errors import failed_precondition, not_found
from serving.server.rest import signature_def_map

log = logging.getLogger("serving")


class LoadedVersion:
    """One loaded version of a served SavedModel: its signatures and signature defs.

    Args:
        path: the version folder.
        embedder: True for our embedder (extra decode/batching fast path), False for any SavedModel.
    """

    def __init__(self, path: str, embedder: bool):
        self.path = path
        self.version = version_of(path)
        if embedder:
            self.embedder = Embedder(path)
            self.signatures = self.embedder.signatures
        else:
            self.embedder = None
            self.saved_model = tf.saved_model.load(path)
            self.signatures = dict(self.saved_model.signatures)
        self.input_specs = {key: fn.structured_input_signature[1] for key, fn in self.signatures.items()}
        self.signature_defs = signature_def_map(path)
        self.warmup_replayed = replay_warmup(self)  # TF Serving's warm-up records, before it is served


class ServedModel:
    """The versions of one model name under a TF Serving base path: serves the highest.

    `refresh()` (called by the server's poll loop) loads a new highest version and then
    swaps it in; requests in flight keep the version they started with. A version that
    fails to load is skipped (the current one keeps serving) until its folder changes; when the
    served version's folder is deleted, the highest remaining version is served (a rollback).

    Args:
        name: model name in URLs and model specs.
        base_path: TF Serving base path (numbered version folders).
        embedder: whether the SavedModels are our embedder.
    """

    def __init__(self, name: str, base_path: str, embedder: bool = True):
        self.name = name
        self.base_path = base_path
        self.embedder = embedder
        self.current: Optional[LoadedVersion] = None
        self.pinned: Dict[int, LoadedVersion] = {}  # versions kept for an index built with them
        self._failed: Dict[int, tuple] = {}  # version -> folder fingerprint when it failed to load

    def refresh(self) -> bool:
        """Serves the highest loadable version; True when it swapped.

        A newer version is loaded and swapped in; when the served version's folder is gone (a
        rollback: the newest deleted) the highest remaining one is. A version that failed to load
        is tried again once its folder changed (`folder_fingerprint`), e.g. a copy that completed.
        """
        on_disk = list_versions(self.base_path)
        current = self.current.version if self.current is not None else None
        gone = current is not None and current not in on_disk
        for version in reversed(on_disk):
            if current is not None and not gone and version <= current:
                return False
            if self.failed_unchanged(version):
                continue
            path = os.path.join(self.base_path, str(version))
            try:
                loaded = self.pinned.get(version) or LoadedVersion(path, self.embedder)
            except Exception as e:  # keep serving the current version
                self._failed[version] = folder_fingerprint(path)
                log.error("model %s: cannot load version %d (tried again once its folder changes): %s",
                          self.name, version, e)
                continue
            self._failed.pop(version, None)
            self.current = loaded  # one reference swap: atomic for the event loop
            log.info("model %s: serving version %d%s", self.name, version,
                     f" (version {current} was removed: rolled back)" if gone else "")
            return True
        if gone:
            log.warning("model %s: version %d was removed and no other version loads: still serving it",
                        self.name, current)
        return False

    def failed_unchanged(self, version: int) -> bool:
        """Whether `version` failed to load and its folder has not changed since."""
        if version not in self._failed:
            return False
        return self._failed[version] == folder_fingerprint(os.path.join(self.base_path, str(version)))

    def pin(self, version: int) -> LoadedVersion:
        """Keeps a specific version loaded (the one a gallery index was embedded with)."""
        if self.current is not None and self.current.version == version:
            return self.current
        if version not in self.pinned:
            self.pinned[version] = LoadedVersion(os.path.join(self.base_path, str(version)), self.embedder)
        return self.pinned[version]

    def get(self, version: Optional[int] = None) -> LoadedVersion:
        """The current version, or `version` when it is the one served.

        Raises FAILED_PRECONDITION when no version is loaded, NOT_FOUND for another version.
        """
        if self.current is None:
            raise failed_precondition(f"Servable {self.name}: no version loaded (none under {self.base_path})")
        if version is not None and version != self.current.version:
            raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
        return self.current


def folder_fingerprint(path: str) -> tuple:
    """(relative path, size, mtime in ns) of every file under `path`, sorted: changes when a file is
    added, removed, rewritten or grows (a copy in progress). () when the folder is gone."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                stat = os.stat(full)
            except OSError:  # removed while walking
                continue
            entries.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(entries))


# ---------------------------------------------------------------- warm-up at load

def replay_warmup(loaded) -> int:
    """Runs every warm-up request of `loaded` (a LoadedVersion) once; how many. For the embedder, a
    `serving_default` record also runs the server's own path (per-image decode, batched `embed_images`)."""
    requests = read_warmup_requests(loaded.path)
    start = time.perf_counter()
    for number, request in enumerate(requests):
        signature = request.model_spec.signature_name or SERVING_SIGNATURE
        if signature not in loaded.signatures:
            raise WarmupError(f"{loaded.path}: warm-up record {number} names signature {signature!r}, which the "
                              f"model does not have ({sorted(loaded.signatures)})")
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        try:
            loaded.signatures[signature](**{name: tf.constant(value) for name, value in inputs.items()})
            if loaded.embedder is not None and signature == SERVING_SIGNATURE:  # the server's own path
                images = np.stack([loaded.embedder.decode(data) for data in inputs["image_bytes"]])
                loaded.embedder.embed_images(images, [m.decode() for m in inputs["modality"]])
        except (tf.errors.OpError, TypeError, ValueError, KeyError) as e:
            raise WarmupError(f"{loaded.path}: warm-up record {number} ({signature}) failed: "
                              f"{' '.join(str(e).split())[:200]}") from None
    if requests:
        log.info("model version %s: warm-up replayed %d requests in %.2f s", loaded.version, len(requests),
                 time.perf_counter() - start)
    return len(requests)


# ---------------------------------------------------------------- whether an index fits

class IndexMismatch(ValueError):
    """The gallery index does not fit the served model (the message names both)."""


def describe_contract(contract: Optional[dict]) -> str:
    return json.dumps(contract, sort_keys=True) if contract is not None else "none recorded"


def check_fit(index_dir: str, manifest: dict, loaded) -> None:
    """Raises IndexMismatch when the index's dimension or image contract differs from `loaded`'s
    (a LoadedVersion of the embedder)."""
    where = f"index {index_dir} (model version {manifest.get('model_version')})"
    served = f"model {loaded.path} (version {loaded.version})"
    dimension = manifest.get("embedding_dim")
    if dimension is not None and int(dimension) != loaded.embedder.embedding_dim:
        raise IndexMismatch(f"{where} holds {dimension}-d embeddings but {served} embeds "
                            f"{loaded.embedder.embedding_dim}-d: rebuild the index with this model")
    contract = manifest.get("image_contract")
    model_contract = loaded.embedder.contract.to_dict()
    if contract is not None and contract != model_contract:
        raise IndexMismatch(f"{where} was built with image contract {describe_contract(contract)} but {served} "
                            f"uses {describe_contract(model_contract)}: rebuild the index with this model")


def index_version(index_dir: str, manifest: dict, served):
    """The embedder version to search `index_dir` with (pinned in `served`, a ServedModel), checked
    against the index; None when the manifest names no version (the served one is checked then)."""
    built_with = manifest.get("model_version")
    if built_with is None:
        check_fit(index_dir, manifest, served.get())
        return None
    on_disk = list_versions(served.base_path)
    if int(built_with) not in on_disk:
        raise IndexMismatch(f"index {index_dir} was built with model version {built_with}, which is not under "
                            f"{served.base_path} (versions there: {on_disk or 'none'}): rebuild the index "
                            f"or restore that version")
    loaded = served.pin(int(built_with))
    check_fit(index_dir, manifest, loaded)
    return loaded
