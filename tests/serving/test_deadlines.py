"""The per-request deadline (--request-timeout-s) on both transports (issue #24 item 5).

Its own server: a 3 s batching window against a 0.5 s deadline, so every embedding request is still
queued when its deadline passes: 504 / DEADLINE_EXCEEDED, and the request is dropped uncomputed.
"""
import os
import time

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.client.rest_client import b64
from tests.serving.conftest import start_server, stop_server


@pytest.fixture(scope="module")
def slow_server(model_base, tmp_path_factory):
    server = start_server(["--model-base", model_base, "--batch-window-ms", "3000", "--request-timeout-s", "0.5"],
                          tmp_path_factory.mktemp("deadline-server"))
    try:
        yield server
    finally:
        stop_server(server)


def _dropped(server) -> int:
    return requests.get(server["url"] + "/healthz", timeout=30).json()["queue"]["dropped"]


def test_rest_request_past_the_server_deadline_is_504_and_dropped(slow_server, gallery_dir, gallery_files):
    image = open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()
    before = _dropped(slow_server)
    start = time.time()
    response = requests.post(slow_server["url"] + "/v1/models/kdem:predict", timeout=60,
                             json={"instances": [{"image_bytes": b64(image), "modality": "visible"}]})
    assert response.status_code == 504, response.text
    assert "deadline of 0.5 s" in response.json()["error"]
    assert time.time() - start < 2.5  # answered at the deadline, not after the 3 s window
    time.sleep(3.5)  # the window closes: the abandoned request is dropped, not computed
    assert _dropped(slow_server) == before + 1
    assert requests.get(slow_server["url"] + "/v1/models/kdem", timeout=30).status_code == 200  # no deadline hit


def test_grpc_call_gets_the_servers_deadline_when_sooner_than_its_own(slow_server, gallery_dir, gallery_files):
    image = open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kdem"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"]))
    with grpc.insecure_channel(slow_server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        start = time.time()
        with pytest.raises(grpc.RpcError) as failure:
            stub.Predict(request, timeout=60)  # the client would wait 60 s
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline of 0.5 s" in failure.value.details()
    assert time.time() - start < 2.5
