"""What REST and gRPC share: the served models and versions, the gallery index, the batcher.

`ServingCore` answers predict, search, status and metadata on numpy arrays and protos;
`serving.server.rest_app` (REST) and `serving.server.grpc_service` (gRPC) only translate their wire
formats to it, so both transports give the same answers from the same loaded versions
and the same micro-batcher. Errors are `serving.server.errors.ServingError` with a TF status code.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from kdem_tf import tta
from kdem_tf.image_contract import MODALITIES, ContractError, modality_index
from kdem_tf.artifacts import (FLIP_IMAGES_SIGNATURE, FLIP_SIGNATURE, IMAGES_SIGNATURE, SEARCH_SIGNATURE,
                               SERVING_SIGNATURE)
from serving.export import search_signature
from serving.server.batching import MicroBatcher, SoloCall, embed_batch
from serving.server.errors import ServingError, failed_precondition, invalid, not_found
from serving.server.request_checks import check_image_pixels, check_k, excerpt
from serving.server.versions import index_version
from serving.server.settings import ServingLimits
from serving.server.versions import LoadedVersion, ServedModel

log = logging.getLogger("serving")


class ServingCore:
    """The models, index and batcher of one server process.

    Args:
        model_base: the embedder's TF Serving base path.
        model_name: its name in URLs and model specs.
        index_dir: gallery index (serving.index) for search; searched with the embedder
            version it was built with.
        extra_models: {name: base path} of other SavedModels (e.g. the retrieval model).
        version_labels: {label: version} of the embedder (TF Serving's version labels).
        limits: ServingLimits.
    """

    def __init__(self, model_base: str, model_name: str = "kdem", index_dir: Optional[str] = None,
                 extra_models: Optional[Dict[str, str]] = None, version_labels: Optional[Dict[str, int]] = None,
                 limits: ServingLimits = ServingLimits()):
        self.model_name = model_name
        self.models = {model_name: ServedModel(model_name, model_base, embedder=True)}
        for name, base in (extra_models or {}).items():
            self.models[name] = ServedModel(name, base, embedder=False)
        self.index_dir = index_dir
        self.index = None
        self.index_version: Optional[LoadedVersion] = None
        self.labels = dict(version_labels or {})
        self.limits = limits
        self.batcher = MicroBatcher(embed_batch, limits.window_ms, limits.max_batch, limits.max_queue,
                                    limits.max_queue_images)
        # JSON bodies and image decoding: off the event loop, in a bounded pool (the model has its own thread)
        self.workers = concurrent.futures.ThreadPoolExecutor(limits.worker_threads, thread_name_prefix="worker")
        self._poller = None

    # ------------------------------------------------------------------ lifecycle

    def load(self) -> None:
        """Loads every model's highest version and the index; fails when the embedder has none."""
        if len(self.models) > 1:
            import scann.scann_ops.py.scann_ops  # noqa: F401  ops of the retrieval model
        for served in self.models.values():
            served.refresh()
            if served.current is None:
                log.warning("model %s: no loadable version under %s (FAILED_PRECONDITION until one appears)",
                            served.name, served.base_path)
        self.models[self.model_name].get()  # the embedder must be servable at startup
        if self.index_dir:
            from serving.export.gallery_index import load_index
            self.index = load_index(self.index_dir)
            self.index_version = index_version(self.index_dir, self.index.manifest,  # refuses a misfit
                                               self.models[self.model_name])

    async def start(self) -> None:
        self.batcher.start()
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        if self._poller:
            self._poller.cancel()
        await self.batcher.stop()
        self.workers.shutdown(wait=False, cancel_futures=True)

    async def in_worker(self, function, *args):
        """function(*args) in the bounded worker pool (JSON parsing, image decoding)."""
        return await asyncio.get_running_loop().run_in_executor(self.workers, function, *args)

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.limits.poll_seconds)
            for served in self.models.values():
                try:
                    await loop.run_in_executor(None, served.refresh)
                except Exception:  # a broken folder must not stop the poller
                    log.exception("model %s: refresh failed", served.name)

    def readiness(self) -> Tuple[bool, dict]:
        """(ready, {model: served version or None}): ready when every model has a version loaded."""
        versions = {name: m.current.version if m.current else None for name, m in self.models.items()}
        return all(v is not None for v in versions.values()) and self._poller is not None, versions

    # ------------------------------------------------------------------ resolution

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise not_found(f"Servable not found for request: Latest({excerpt(name, self.limits.max_echo_chars)})")
        return self.models[name]

    def resolve(self, name: str, version: Optional[int] = None, label: Optional[str] = None,
                signature: str = SERVING_SIGNATURE) -> LoadedVersion:
        """The version a request names (latest by default); search uses the index's version."""
        served = self.model(name)
        if label:
            if name != self.model_name or label not in self.labels:
                raise invalid(f"Unrecognized servable version label: {excerpt(label, self.limits.max_echo_chars)}")
            version = self.labels[label]
        if signature == SEARCH_SIGNATURE and name == self.model_name:
            loaded = self.search_version()
            if version is not None and version != loaded.version:
                raise not_found(f"Servable not found for request: Specific({name}, {version}) "
                                f"(the gallery index is searched with version {loaded.version})")
            return loaded
        return served.get(version)

    def search_version(self) -> LoadedVersion:
        if self.index is None:
            raise failed_precondition("no gallery index loaded (start the server with --index)")
        return self.index_version or self.models[self.model_name].get()

    def signature_defs(self, loaded: LoadedVersion) -> dict:
        """{key: SignatureDef} of a loaded version, with `search` on the embedder when an index is loaded."""
        defs = dict(loaded.signature_defs)
        if loaded.embedder is not None and self.index is not None:
            defs[SEARCH_SIGNATURE] = search_signature.search_signature_def()
        return defs

    def input_specs(self, loaded: LoadedVersion, signature: str) -> dict:
        """{input name: TensorSpec} of a signature (NOT_FOUND when the version has none of that name)."""
        if signature == SEARCH_SIGNATURE and loaded.embedder is not None and self.index is not None:
            return search_signature.INPUT_SPECS
        if signature not in loaded.input_specs:
            raise not_found(f"Serving signature name: {excerpt(signature, self.limits.max_echo_chars)} "
                            f"not found in signature def")
        return loaded.input_specs[signature]

    # ------------------------------------------------------------------ computation

    async def predict(self, loaded: LoadedVersion, signature: str, inputs: Dict[str, np.ndarray],
                      deadline: Optional[float] = None) -> dict:
        """{input: array} (already checked against `input_specs`) -> {output: array}.

        Args:
            deadline: event-loop time after which the caller no longer waits (gRPC deadlines):
                a request still queued then is dropped uncomputed.
        """
        batch = max((len(a) for a in inputs.values() if np.ndim(a) > 0), default=1)
        if batch > self.limits.max_instances:
            raise invalid(f"batch of {batch}: at most {self.limits.max_instances} per request")
        if signature == SEARCH_SIGNATURE and loaded.embedder is not None:
            k = check_k(inputs["k"][()], self.limits.max_k, "input 'k'")
            _, results = await self.search(list(inputs["image_bytes"]), list(inputs["modality"]),
                                           [k] * len(inputs["image_bytes"]), deadline)
            return search_signature.search_outputs(results)
        embedder_signatures = (SERVING_SIGNATURE, IMAGES_SIGNATURE, FLIP_SIGNATURE, FLIP_IMAGES_SIGNATURE)
        if loaded.embedder is not None and signature in embedder_signatures:
            encoded = signature in (SERVING_SIGNATURE, FLIP_SIGNATURE)
            images = inputs["image_bytes" if encoded else "images"]
            flip = signature in (FLIP_SIGNATURE, FLIP_IMAGES_SIGNATURE)
            return {"embedding": await self.embed(loaded, images, list(inputs["modality"]), encoded, deadline, flip)}
        for name, values in inputs.items():  # encoded images of other models (e.g. the retrieval model) too
            if name.endswith("image_bytes") and values.dtype == object:
                check_image_pixels(values.reshape(-1), self.limits.max_image_pixels, name)
        function = loaded.signatures[signature]  # any other signature: alone, through the same queue and thread
        return await self.batcher.submit(SoloCall(lambda given: run_signature(function, given)), inputs, batch,
                                         deadline)

    async def embed(self, loaded: LoadedVersion, images_or_bytes, modalities: Sequence, encoded: bool,
                    deadline: Optional[float] = None, flip: bool = False) -> np.ndarray:
        """Validates + decodes one request's images in a thread, then joins the next batch.

        flip: flip test-time augmentation (kdem_tf.tta), for an index built with `--flip`: the
        images and their mirrors go through the batcher together, L2(e(x) + e(mirror(x)))."""
        modalities = check_modalities(modalities, limit=self.limits.max_echo_chars)
        if not len(images_or_bytes):
            raise invalid("no images in the request: at least one")
        if len(modalities) != len(images_or_bytes):
            raise invalid(f"{len(images_or_bytes)} images but {len(modalities)} modalities")
        if encoded:
            check_image_pixels(images_or_bytes, self.limits.max_image_pixels)
        size = len(images_or_bytes) * (2 if flip else 1)
        self.batcher.reserve(size)  # before decoding: 429 at once under overload, decoding bounded too
        queued = False
        try:
            images = await self.decode(loaded, images_or_bytes) if encoded else np.asarray(images_or_bytes,
                                                                                             np.float32)
            if flip:
                images, modalities = np.concatenate([images, images[:, :, ::-1]]), modalities + modalities
            queued = True
            out = await self.batcher.submit(loaded, (images, modalities), size, deadline, reserved=True)
        finally:
            if not queued:
                self.batcher.release(size)
        return tta.combine_flip(out[:size // 2], out[size // 2:]) if flip else out

    async def decode(self, loaded: LoadedVersion, images: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> float32 [N, H, W, 3] with the version's contract, in the worker pool."""
        def decode_all():
            try:
                return np.stack([loaded.embedder.decode(b) for b in images])
            except tf.errors.OpError as e:
                raise invalid(f"image_bytes: not a decodable JPEG/PNG/BMP image: {short_error(e)}") from None
        try:
            return await self.in_worker(decode_all)
        except asyncio.CancelledError:  # the caller went away while its images were decoded
            self.batcher.dropped += 1
            raise

    async def search(self, images: List[bytes], modalities: Sequence, ks: List[int],
                     deadline: Optional[float] = None) -> Tuple[LoadedVersion, list]:
        """Query images -> (the version searched with, ranked results per query, k of each)."""
        loaded = self.search_version()
        if not images or len(images) > self.limits.max_instances:
            raise invalid(f"between 1 and {self.limits.max_instances} queries per request")
        ks = [check_k(k, self.limits.max_k, f"query {i}", self.limits.max_echo_chars) for i, k in enumerate(ks)]
        embeddings = await self.embed(loaded, images, modalities, encoded=True, deadline=deadline,
                                      flip=bool(self.index.manifest.get("flip")))
        index = self.index  # the search too goes through the queue and the model's thread, not refused now
        self.batcher.reserve(len(images), admitted=True)
        indices, scores = await self.batcher.submit(SoloCall(lambda queries: index.search(queries, max(ks))),
                                                    embeddings, len(images), deadline, reserved=True)
        results = self.index.results(indices, scores)
        return loaded, [row[:k] for row, k in zip(results, ks)]


def check_modalities(values, name: str = "modality", limit: int = 64) -> List[str]:
    """Modality names (str or bytes) -> str, INVALID_ARGUMENT for a name outside the image contract."""
    out = []
    for i, value in enumerate(values):
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        try:
            modality_index(text, f"{name}[{i}]")
        except ContractError:
            raise invalid(f"{name}[{i}]: must be one of {list(MODALITIES)}, got {excerpt(text, limit)}") from None
        out.append(text)
    return out


def check_inputs(arrays: Dict[str, np.ndarray], specs: Dict[str, tf.TensorSpec]) -> Dict[str, np.ndarray]:
    """Decoded request tensors against a signature's inputs: names, dtypes, shapes (INVALID_ARGUMENT)."""
    if set(arrays) != set(specs):
        raise invalid(f"inputs {sorted(arrays)} do not match the signature's inputs {sorted(specs)}")
    for name, spec in specs.items():
        array = arrays[name]
        dtype = tf.string if array.dtype == object else tf.as_dtype(array.dtype)
        if dtype != spec.dtype:
            raise invalid(f"input {name!r}: expects {spec.dtype.name} but got {dtype.name}")
        if spec.shape.rank is not None and not spec.shape.is_compatible_with(array.shape):
            raise invalid(f"input {name!r}: shape {list(array.shape)} does not match the signature's "
                          f"{spec.shape.as_list()}")
    batches = {len(a) for a in arrays.values() if a.ndim > 0}
    if len(batches) > 1:
        raise invalid(f"inputs have different batch sizes {sorted(batches)}")
    return arrays


def short_error(error: tf.errors.OpError) -> str:
    """The cause line of a TF error, without the graph-trace noise."""
    lines = [line.strip() for line in error.message.splitlines() if line.strip()]
    noise = ("[[", "File ", "Detected at node", "Graph execution error", "<stack traces")
    causes = [line for line in lines if not line.startswith(noise)]
    return causes[-1] if causes else lines[-1] if lines else "error"


def run_signature(function, inputs: dict) -> dict:
    """Calls a SavedModel signature on numpy inputs (one call per request: no batching)."""
    try:
        outputs = function(**{name: tf.constant(value) for name, value in inputs.items()})
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
        raise invalid(short_error(e) if isinstance(e, tf.errors.OpError) else str(e)) from None
    return {name: value.numpy() for name, value in outputs.items()}


__all__ = ["ServingCore", "ServingLimits", "ServingError", "check_inputs", "check_modalities", "MODALITIES"]
