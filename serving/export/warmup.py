"""The warm-up requests of an exported embedder: `assets.extra/tf_serving_warmup_requests`.

TF Serving's format (tensorflow_serving/servables/tensorflow/saved_model_warmup): a TFRecord file of
`tensorflow.serving.PredictionLog` protos, each a `predict_log.request` (a PredictRequest) that the
model server runs once per record after it loads the version and before it marks it AVAILABLE. The
stock `tensorflow_model_server` replays this file by itself; `serving.server` replays it too
(serving.server.versions) before it reports ready or swaps a new version in.

`read_warmup_requests` reads such a file back (the server's replay: serving.server.versions).

The records: one `serving_default` request per modality, each with one mid-grey PNG at the image
contract's size, and the same for `serving_flip`, so the first client request finds every traced
function (decode, resize, network) already run.
"""
from __future__ import annotations

import os
from typing import List

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from kdem_tf.artifacts import ASSETS_EXTRA_DIR, FLIP_SIGNATURE, SERVING_SIGNATURE
from kdem_tf.image_contract import MODALITIES, ImageContract

WARMUP_FILE = "tf_serving_warmup_requests"  # TF Serving's file name in assets.extra/
WARMUP_SIGNATURES = (SERVING_SIGNATURE, FLIP_SIGNATURE)
MAX_RECORDS = 1000  # TF Serving's bound on the records it replays


def warmup_image(contract: ImageContract) -> bytes:
    """A mid-grey PNG at the contract's size (what the model will decode and resize)."""
    height, width = contract.image_size
    return tf.io.encode_png(tf.fill([height, width, 3], tf.constant(128, tf.uint8))).numpy()


def warmup_records(contract: ImageContract) -> List[prediction_log_pb2.PredictionLog]:
    """The PredictionLog records of an embedder with this contract (see the module's docstring)."""
    image = warmup_image(contract)
    records = []
    for signature in WARMUP_SIGNATURES:
        for modality in MODALITIES:
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = signature
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
            request.inputs["modality"].CopyFrom(tf.make_tensor_proto([modality], dtype=tf.string))
            records.append(prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)))
    return records


def write_warmup_file(export_dir: str, contract: ImageContract) -> str:
    """Writes `export_dir/assets.extra/tf_serving_warmup_requests` (via a temporary sibling, renamed)."""
    folder = os.path.join(export_dir, ASSETS_EXTRA_DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, WARMUP_FILE)
    temporary = os.path.join(folder, f".{WARMUP_FILE}.tmp-{os.getpid()}")
    with tf.io.TFRecordWriter(temporary) as writer:
        for record in warmup_records(contract):
            writer.write(record.SerializeToString())
    os.replace(temporary, path)
    return path


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
