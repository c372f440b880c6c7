"""Python client for TF Serving's gRPC API (+ the `search` signature), with the official stubs.

Same methods and return values as `serving.client.rest_client.ServingClient` (REST): `status()` and
`metadata()` return the JSON dicts of the REST API (converted from the protos), `predict`
embeddings, `search` ranked results, so code and tests can switch transports.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import grpc
import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from kdem_tf.artifacts import SEARCH_SIGNATURE, SERVING_SIGNATURE


class GrpcClientError(RuntimeError):
    """The server answered with a gRPC error: `code` (grpc.StatusCode) and its details."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"gRPC {code.name}: {message}")
        self.code = code
        self.message = message


def tensor(values, dtype=None):
    """numpy-convertible values -> TensorProto (strings as bytes)."""
    import tensorflow as tf
    return tf.make_tensor_proto(values, dtype=dtype)


def array(proto) -> np.ndarray:
    import tensorflow as tf
    return tf.make_ndarray(proto)


class GrpcClient:
    """Talks to `serving.server --grpc-port` or `tensorflow_model_server --port`.

    Args:
        target: HOST:PORT.
        model: model name.
        version: pin a version (default: latest).
        timeout: seconds per call (the gRPC deadline).
        token: bearer token, sent as the `authorization` metadata.
        ca_cert: PEM file of the CA (or self-signed certificate) to trust: TLS when given.
    """

    def __init__(self, target: str, model: str = "kdem", version: Optional[int] = None, timeout: float = 60.0,
                 token: Optional[str] = None, ca_cert: Optional[str] = None):
        if ca_cert:
            with open(ca_cert, "rb") as f:
                self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=f.read()))
        else:
            self.channel = grpc.insecure_channel(target)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.model = model
        self.version = version
        self.timeout = timeout
        self.call_metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def _spec(self, spec, signature: str = "") -> None:
        spec.name = self.model
        if self.version is not None:
            spec.version.value = self.version
        if signature:
            spec.signature_name = signature

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self.call_metadata)
        except grpc.RpcError as e:
            raise GrpcClientError(e.code(), e.details()) from None

    def status(self) -> dict:
        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        response = self._call(self.models.GetModelStatus, request)
        return json_format.MessageToDict(response, preserving_proto_field_name=True,
                                         including_default_value_fields=True)

    def metadata(self) -> dict:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec)
        response = self._call(self.prediction.GetModelMetadata, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return {"model_spec": {"name": response.model_spec.name, "signature_name": "",
                               "version": str(response.model_spec.version.value)},
                "metadata": {"signature_def": json_format.MessageToDict(signature_map,
                                                                        preserving_proto_field_name=True)}}

    def predict_raw(self, inputs: dict, signature: str = SERVING_SIGNATURE, output_filter=()) -> dict:
        """{input name: TensorProto or values} -> {output name: numpy array}."""
        request = predict_pb2.PredictRequest(output_filter=list(output_filter))
        self._spec(request.model_spec, signature)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(value if hasattr(value, "dtype") and hasattr(value, "tensor_shape")
                                          else tensor(value))
        response = self._call(self.prediction.Predict, request)
        return {name: array(proto) for name, proto in response.outputs.items()}

    def predict(self, images: Sequence[bytes], modalities: Sequence[str]) -> np.ndarray:
        """Embeds encoded images with `serving_default` -> float32 [N, D]."""
        return self.predict_raw({"image_bytes": list(images), "modality": list(modalities)})["embedding"]

    def search(self, images: Sequence[bytes], modalities: Sequence[str], k: int = 10) -> List[List[dict]]:
        """Ranked gallery matches per query image via the `search` signature (REST `:search`'s shape)."""
        import tensorflow as tf
        out = self.predict_raw({"image_bytes": list(images), "modality": list(modalities),
                                "k": tensor(k, tf.int32)}, signature=SEARCH_SIGNATURE)
        return [[{"rank": j + 1, "index": int(out["gallery_ids"][i, j]), "person_id": int(out["person_ids"][i, j]),
                  "camera": int(out["cameras"][i, j]), "path": out["paths"][i, j].decode("utf-8"),
                  "score": float(out["scores"][i, j])} for j in range(out["gallery_ids"].shape[1])]
                for i in range(len(images))]
