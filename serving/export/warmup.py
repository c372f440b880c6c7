"""The warm-up requests of an exported embedder: `assets.extra/tf_serving_warmup_requests`.

TF Serving's format (tensorflow_serving/servables/tensorflow/saved_model_warmup): a TFRecord file of
`tensorflow.serving.PredictionLog` protos, each a `predict_log.request` (a PredictRequest) that the
model server runs once per record after it loads the version and before it marks it AVAILABLE. The
stock `tensorflow_model_server` replays this file by itself; `serving.server` replays it too
(serving.server.warmup) before it reports ready or swaps a new version in.

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
