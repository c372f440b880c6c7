"""Model versions on disk and an asyncio micro-batcher, for `serving.server`."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from typing import Callable, Dict, List, Optional

import numpy as np

from serving.embedder import Embedder
from serving.export import SERVING_SIGNATURE, list_versions
from serving.rest import not_found, signature_defs

log = logging.getLogger("serving")


class LoadedVersion:
    """One loaded version of a served SavedModel: its signatures and metadata.

    Args:
        path: the version folder.
        embedder: True for our embedder (extra decode/batching fast path), False for any SavedModel.
    """

    def __init__(self, path: str, embedder: bool):
        self.path = path
        self.version = int(os.path.basename(os.path.normpath(path)))
        if embedder:
            self.embedder = Embedder(path)
            self.signatures = self.embedder.signatures
        else:
            import tensorflow as tf
            self.embedder = None
            self.saved_model = tf.saved_model.load(path)
            self.signatures = dict(self.saved_model.signatures)
        self.input_specs = {key: fn.structured_input_signature[1] for key, fn in self.signatures.items()}
        self.metadata = signature_defs(path)


class ServedModel:
    """The versions of one model name under a TF Serving base path: serves the highest.

    `refresh()` (called by the server's poll loop) loads a new highest version and then
    swaps it in; requests in flight keep the version they started with.

    Args:
        name: model name in URLs.
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
        """The current version, or `version` when it is the one served (404 otherwise)."""
        if self.current is None:
            raise not_found(f"Servable not found for request: Latest({self.name})")
        if version is not None and version != self.current.version:
            raise not_found(f"Servable not found for request: Specific({self.name}, {version})")
        return self.current


class MicroBatcher:
    """Collects concurrent requests for a short window and runs them as one model call.

    One batch runs at a time, in a dedicated thread; requests arriving meanwhile queue
    up and form the next batch, so the batch size adapts to the load.

    Args:
        run: fn(key, [inputs of each request]) -> [outputs of each request], run in a thread.
        window_ms: how long the first request of a batch waits for company.
        max_batch: most items (images) per call; a larger request runs alone.
    """

    def __init__(self, run: Callable, window_ms: float = 5.0, max_batch: int = 32):
        self.run = run
        self.window = window_ms / 1000.0
        self.max_batch = max_batch
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="batch")
        self.queue: Optional[asyncio.Queue] = None
        self._carry = None
        self._task = None
        self.batch_sizes: List[int] = []

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, key, inputs, size: int):
        """Queues one request (`size` items, all of batch key `key`) and awaits its outputs."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((key, inputs, size, future))
        return await future

    async def _next(self, timeout: Optional[float]):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self.queue.get()
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            items, size = [first], first[2]
            deadline = loop.time() + self.window
            while size < self.max_batch:
                try:
                    item = await self._next(max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if item[0] is not first[0] or size + item[2] > self.max_batch:
                    self._carry = item  # other model version, or too big: next batch
                    break
                items.append(item)
                size += item[2]
            self.batch_sizes.append(size)
            try:
                outputs = await loop.run_in_executor(self.executor, self.run, first[0], [i[1] for i in items])
                for item, output in zip(items, outputs):
                    if not item[3].done():
                        item[3].set_result(output)
            except Exception as e:  # inputs were validated per request: this is the model's failure
                for item in items:
                    if not item[3].done():
                        item[3].set_exception(e)


def embed_batch(version: LoadedVersion, requests: list) -> list:
    """Batch runner for embedder requests [(images [n, H, W, 3], modalities [n])] -> [embeddings [n, D]]."""
    images = np.concatenate([images for images, _ in requests])
    modalities = [m for _, mods in requests for m in mods]
    embeddings = version.embedder.embed_images(images, modalities)
    splits = np.cumsum([len(images) for images, _ in requests])[:-1]
    return np.split(embeddings, splits)


__all__ = ["LoadedVersion", "ServedModel", "MicroBatcher", "embed_batch", "SERVING_SIGNATURE"]
