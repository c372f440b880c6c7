"""Model versions on disk: the loaded versions of each served model name, for `serving.server`."""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional

from kdem_tf.artifacts import list_versions, version_of
from serving.export.embedder import Embedder
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
            import tensorflow as tf
            self.embedder = None
            self.saved_model = tf.saved_model.load(path)
            self.signatures = dict(self.saved_model.signatures)
        self.input_specs = {key: fn.structured_input_signature[1] for key, fn in self.signatures.items()}
        self.signature_defs = signature_def_map(path)


class ServedModel:
    """The versions of one model name under a TF Serving base path: serves the highest.

    `refresh()` (called by the server's poll loop) loads a new highest version and then
    swaps it in; requests in flight keep the version they started with. A version that
    fails to load is remembered and skipped, and the current one keeps serving.

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
        self._failed: set = set()

    def refresh(self) -> bool:
        """Loads the highest version when newer than the current one; True when it swapped."""
        versions = [v for v in list_versions(self.base_path) if v not in self._failed]
        if not versions or (self.current is not None and versions[-1] <= self.current.version):
            return False
        version = versions[-1]
        try:
            loaded = LoadedVersion(os.path.join(self.base_path, str(version)), self.embedder)
        except Exception as e:  # keep serving the current version
            log.error("model %s: cannot load version %d: %s", self.name, version, e)
            self._failed.add(version)
            return False
        self.current = loaded  # one reference swap: atomic for the event loop
        log.info("model %s: serving version %d", self.name, version)
        return True

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
