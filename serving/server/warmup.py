"""Replays a version's `assets.extra/tf_serving_warmup_requests` at load, as TF Serving does.

Each record (a `PredictionLog` with a `predict_log.request`, serving.export.warmup) is run once on
the signature it names, before the version is served: at start before the server reports ready,
on a new version before it is swapped in. For our embedder the server's own path (decode per image,
then the batched `embed_images`) runs too. A file that is not such records, or a record the model
refuses, fails the version's load (as in TF Serving), naming the file and the record. At most
`MAX_RECORDS` records are read (TF Serving's bound).
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from kdem_tf.artifacts import ASSETS_EXTRA_DIR, SERVING_SIGNATURE
from serving.export.warmup import WARMUP_FILE

log = logging.getLogger("serving")
MAX_RECORDS = 1000


class WarmupError(ValueError):
    """The warm-up file cannot be replayed (the message names the file and the record)."""


def read_warmup_requests(version_dir: str) -> list:
    """The PredictRequests of a version's warm-up file ([] when it has none)."""
    path = os.path.join(version_dir, ASSETS_EXTRA_DIR, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    requests = []
    try:
        for number, record in enumerate(tf.data.TFRecordDataset(path).take(MAX_RECORDS + 1).as_numpy_iterator()):
            if number == MAX_RECORDS:
                raise WarmupError(f"{path}: more than {MAX_RECORDS} warm-up records")
            entry = prediction_log_pb2.PredictionLog.FromString(record)
            if not entry.HasField("predict_log"):
                raise WarmupError(f"{path}: record {number} is not a predict_log (only Predict is replayed)")
            requests.append(entry.predict_log.request)
    except (tf.errors.OpError, ValueError) as e:
        if isinstance(e, WarmupError):
            raise
        raise WarmupError(f"{path}: not a TFRecord file of PredictionLog protos ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None
    return requests


def replay_warmup(loaded) -> int:
    """Runs every warm-up request of `loaded` (a serving.server.versions.LoadedVersion); the count."""
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
