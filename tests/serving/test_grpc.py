"""TF Serving's gRPC API with the official stubs against the live server: row for row REST's answers.

Fixture `server` (conftest): one process serving REST and gRPC from the same loaded
versions and batcher. Every call goes through `prediction_service_pb2_grpc` /
`model_service_pb2_grpc` stubs on 127.0.0.1.
"""
import os

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from serving.client.rest_client import ServingClient, b64
from tests.serving.conftest import EMBEDDING_DIM


def _images(gallery_dir, gallery_files, count):
    return [open(os.path.join(gallery_dir, p), "rb").read() for p in gallery_files[:count]]


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server["grpc"])
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


def _predict_request(images, modalities, signature="", model="kdem", version=None, label=""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(modalities))
    return request


def _code(call, request):
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=60)
    assert error.value.details()  # a message, not just a code
    return error.value.code()


def test_status_equals_rest(server, stubs):
    _, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "kdem"
    response = models.GetModelStatus(request, timeout=30)
    as_json = json_format.MessageToDict(response, preserving_proto_field_name=True,
                                        including_default_value_fields=True)
    assert as_json == ServingClient(server["url"]).status()
    assert response.model_version_status[0].state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    request.model_spec.version.value = 1
    assert models.GetModelStatus(request, timeout=30).model_version_status[0].version == 1


def test_metadata_equals_rest(server, stubs):
    prediction, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "kdem"
    response = prediction.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == "kdem" and response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    rest = ServingClient(server["url"]).metadata()["metadata"]["signature_def"]
    assert json_format.MessageToDict(signature_map, preserving_proto_field_name=True) == rest
    assert set(signature_map.signature_def) == {"serving_default", "embed_images", "serving_flip", "embed_images_flip", "search"}


def test_predict_every_signature_equals_rest(server, stubs, embedder, gallery_dir, gallery_files):
    prediction, _ = stubs
    images = _images(gallery_dir, gallery_files, 3)
    modalities = ["visible", "infrared", "visible"]
    rest = ServingClient(server["url"]).predict(images, modalities)
    response = prediction.Predict(_predict_request(images, modalities), timeout=60)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("kdem", 1, "serving_default")
    grpc_embeddings = tf.make_ndarray(response.outputs["embedding"])
    assert grpc_embeddings.shape == (3, EMBEDDING_DIM)
    np.testing.assert_allclose(grpc_embeddings, rest, atol=1e-5)
    np.testing.assert_allclose(grpc_embeddings, embedder.embed_bytes(images, modalities), atol=1e-5)
    # embed_images (float images), pinned by version and by output_filter.
    floats = np.stack([embedder.decode(b) for b in images]).astype(np.float32)
    request = predict_pb2.PredictRequest(output_filter=["embedding"])
    request.model_spec.name, request.model_spec.signature_name = "kdem", "embed_images"
    request.model_spec.version.value = 1
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(floats))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(modalities))
    outputs = prediction.Predict(request, timeout=60).outputs
    assert list(outputs) == ["embedding"]
    np.testing.assert_allclose(tf.make_ndarray(outputs["embedding"]), rest, atol=1e-5)


def test_search_signature_equals_rest_search(server, stubs, gallery_dir, gallery_files):
    prediction, _ = stubs
    images = _images(gallery_dir, gallery_files, 3)
    request = _predict_request(images, ["infrared"] * 3, signature="search")
    request.inputs["k"].CopyFrom(tf.make_tensor_proto(4, tf.int32))
    response = prediction.Predict(request, timeout=60)
    assert response.model_spec.version.value == 1
    out = {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}
    assert set(out) == {"gallery_ids", "person_ids", "cameras", "scores", "paths"}
    rest = ServingClient(server["url"]).search(images, ["infrared"] * 3, k=4)
    for row, ranked in enumerate(rest):
        assert out["gallery_ids"][row].tolist() == [r["index"] for r in ranked]
        assert out["person_ids"][row].tolist() == [r["person_id"] for r in ranked]
        assert out["cameras"][row].tolist() == [r["camera"] for r in ranked]
        assert [p.decode() for p in out["paths"][row]] == [r["path"] for r in ranked]
        np.testing.assert_allclose(out["scores"][row], [r["score"] for r in ranked], atol=1e-5)
    # The same signature over REST :predict (columnar: k is a scalar input).
    body = {"signature_name": "search", "inputs": {"image_bytes": [b64(i) for i in images],
                                                   "modality": ["infrared"] * 3, "k": 4}}
    columns = ServingClient(server["url"]).predict_raw(body)["outputs"]
    assert columns["gallery_ids"] == out["gallery_ids"].tolist()


def test_each_error_code(server, stubs, gallery_dir, gallery_files):
    prediction, models = stubs
    image = _images(gallery_dir, gallery_files, 1)
    good = _predict_request(image, ["visible"])
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    bad_modality = _predict_request(image, ["thermal"])
    bad_image = _predict_request([b"not an image"], ["visible"])
    wrong_dtype = _predict_request(image, ["visible"])
    wrong_dtype.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([1.0]))
    missing = predict_pb2.PredictRequest()
    missing.CopyFrom(good)
    del missing.inputs["modality"]
    mismatch = _predict_request(image * 2, ["visible"])
    too_many = _predict_request(image * 17, ["visible"] * 17)
    bad_filter = predict_pb2.PredictRequest(output_filter=["nope"])
    bad_filter.CopyFrom(good)
    bad_filter.output_filter.append("nope")
    bad_k = _predict_request(image, ["visible"], signature="search")
    bad_k.inputs["k"].CopyFrom(tf.make_tensor_proto(0, tf.int32))
    for request in (bad_modality, bad_image, wrong_dtype, missing, mismatch, too_many, bad_filter, bad_k,
                    _predict_request(image, ["visible"], label="stable")):
        assert _code(prediction.Predict, request) == invalid, str(request)[:300]
    not_found = grpc.StatusCode.NOT_FOUND
    for request in (_predict_request(image, ["visible"], model="other"),
                    _predict_request(image, ["visible"], version=9),
                    _predict_request(image, ["visible"], signature="nope")):
        assert _code(prediction.Predict, request) == not_found, str(request.model_spec)
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "other"
    assert _code(models.GetModelStatus, status) == not_found
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "kdem"
    metadata.model_spec.version.value = 3
    assert _code(prediction.GetModelMetadata, metadata) == not_found
    assert _code(prediction.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=metadata.model_spec, metadata_field=["nope"])) == invalid
    # The server keeps serving.
    assert prediction.Predict(good, timeout=60).outputs["embedding"].tensor_shape.dim[1].size == EMBEDDING_DIM
    assert requests.get(server["url"] + "/healthz").json()["ready"] is True
