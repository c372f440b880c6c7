"""The `search` signature: gallery search as a TF Serving Predict on the embedder model.

Inputs `image_bytes` string [N], `modality` string [N] and `k` int32 [] (results per
query); outputs, all [N, k'] with k' = min(k, gallery size), best first:
`gallery_ids` int64 (rows of the index), `person_ids` int64, `cameras` int64,
`scores` float32 (dot products of L2-normalised embeddings) and `paths` string.
Any TF Serving client can call it (gRPC Predict or REST :predict with
`"signature_name": "search"`); it is served with the embedder version the index was
built with, as `:search` is.
"""
from __future__ import annotations

from typing import List

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

PREDICT_METHOD = "tensorflow/serving/predict"

INPUT_SPECS = {"image_bytes": tf.TensorSpec([None], tf.string, name="image_bytes"),
               "modality": tf.TensorSpec([None], tf.string, name="modality"),
               "k": tf.TensorSpec([], tf.int32, name="k")}
OUTPUT_DTYPES = {"gallery_ids": tf.int64, "person_ids": tf.int64, "cameras": tf.int64, "scores": tf.float32,
                 "paths": tf.string}


def _tensor_info(name: str, dtype: tf.DType, dims: List[int]) -> meta_graph_pb2.TensorInfo:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return meta_graph_pb2.TensorInfo(name=f"search_{name}:0", dtype=dtype.as_datatype_enum, tensor_shape=shape)


def search_signature_def() -> meta_graph_pb2.SignatureDef:
    """The SignatureDef proto that metadata requests report for `search`."""
    signature = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
    for name, spec in INPUT_SPECS.items():
        signature.inputs[name].CopyFrom(_tensor_info(name, spec.dtype, [-1] * spec.shape.rank))
    for name, dtype in OUTPUT_DTYPES.items():
        signature.outputs[name].CopyFrom(_tensor_info(name, dtype, [-1, -1]))
    assert signature.inputs["k"].dtype == types_pb2.DT_INT32
    return signature


def search_outputs(results: List[List[dict]]) -> dict:
    """`GalleryIndex.results` rows (equal lengths) -> the signature's output arrays."""
    def column(key, dtype):
        return np.array([[r[key] for r in row] for row in results], dtype=dtype).reshape(len(results), -1)
    paths = np.empty((len(results), len(results[0]) if results else 0), dtype=object)
    for i, row in enumerate(results):
        for j, r in enumerate(row):
            paths[i, j] = r["path"].encode("utf-8")
    return {"gallery_ids": column("index", np.int64), "person_ids": column("person_id", np.int64),
            "cameras": column("camera", np.int64), "scores": column("score", np.float32), "paths": paths}
