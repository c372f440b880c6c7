"""Clean errors for malformed requests (#24 findings 6 and 7) on both transports of a live server.

Each malformed request is a 400 / INVALID_ARGUMENT (404 / NOT_FOUND for a name that does not
exist) with a one-line message that echoes at most a bounded prefix of the offending value, and
the server log holds no traceback. An internal failure is a 500 with a request id, its traceback
logged once (checked on the REST middleware with a route that fails).
Live server: fixture `limited_server` (conftest), loopback only, every call with a timeout.
"""
import asyncio
import json
import logging
import os

import grpc
import pytest
import requests
import tensorflow as tf
from fastapi import FastAPI
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.client.rest_client import b64
from serving.server.rest_errors import InternalErrors

MAX_MESSAGE = 400  # characters: the echo of an offending value is cut to a prefix
BAD_K = ["1e30", "NaN", "Infinity", "1.5", "true", "4294967301", "0", "-1", "1001", '"5"', "null"]


def _image(gallery_dir, gallery_files) -> bytes:
    return open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()


def _assert_clean_400(response, status=400):
    assert response.status_code == status, (response.status_code, response.text[:300])
    message = response.json()["error"]
    assert "\n" not in message and len(message) < MAX_MESSAGE, message[:500]
    return message


@pytest.fixture(scope="module")
def live(limited_server):
    """The limited server; after the module, its log must hold no traceback."""
    yield limited_server
    with open(limited_server["log"]) as f:
        log = f.read()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def test_deep_json_is_a_400(live):
    deep = b"[" * 100_000
    for route in ("/v1/models/kdem:predict", "/v1/models/kdem:search"):
        message = _assert_clean_400(requests.post(live["url"] + route, data=deep, timeout=30))
        assert "JSON" in message
    nested = b'{"instances": ' + b"[" * 40 + b"1" + b"]" * 40 + b"}"  # valid JSON, too deep for any input
    assert "deeper than 16" in _assert_clean_400(requests.post(live["url"] + "/v1/models/kdem:predict",
                                                               data=nested, timeout=30))


@pytest.mark.parametrize("version", ["%C2%B2", "1" * 5000, "9223372036854775808", "-1", "1.0"])
def test_non_ascii_or_oversized_versions_are_400(live, version):
    for method, suffix in (("get", ""), ("get", "/metadata"), ("post", ":predict")):
        response = getattr(requests, method)(f"{live['url']}/v1/models/kdem/versions/{version}{suffix}",
                                             json={"instances": []}, timeout=30)
        assert "version" in _assert_clean_400(response)


@pytest.mark.parametrize("k", BAD_K)
def test_bad_k_is_a_400_on_search_and_on_the_search_signature(live, gallery_dir, gallery_files, k):
    image = b64(_image(gallery_dir, gallery_files))["b64"]
    search = f'{{"image": {{"b64": "{image}"}}, "modality": "visible", "k": {k}}}'
    _assert_clean_400(requests.post(live["url"] + "/v1/models/kdem:search", data=search, timeout=30))
    predict = (f'{{"signature_name": "search", "inputs": {{"image_bytes": [{{"b64": "{image}"}}], '
               f'"modality": ["visible"], "k": {k}}}}}')
    _assert_clean_400(requests.post(live["url"] + "/v1/models/kdem:predict", data=predict, timeout=30))


def test_bad_k_over_grpc_is_invalid_argument(live, gallery_dir, gallery_files):
    image = _image(gallery_dir, gallery_files)
    with grpc.insecure_channel(live["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for k in (tf.make_tensor_proto(4294967301, tf.int64), tf.make_tensor_proto(1.5, tf.float32),
                  tf.make_tensor_proto(True), tf.make_tensor_proto(0, tf.int32), tf.make_tensor_proto(1001, tf.int32),
                  tf.make_tensor_proto([3, 4], tf.int32)):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "kdem"
            request.model_spec.signature_name = "search"
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
            request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"]))
            request.inputs["k"].CopyFrom(k)
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request, timeout=30)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (k, error.value.details())
            assert len(error.value.details()) < MAX_MESSAGE


def test_nan_infinity_and_unknown_fields_are_400(live, gallery_dir, gallery_files):
    url = live["url"]
    image = b64(_image(gallery_dir, gallery_files))["b64"]
    row, nan_row = ("[" + ",".join([pixel] * 32) + "]" for pixel in ("[0, 0, 0]", "[NaN, 0, 0]"))
    pixels = "[[" + ",".join([nan_row] + [row] * 63) + "]]"  # [1, 64, 32, 3], one NaN
    for body in ('{"signature_name": "embed_images", "inputs": {"images": ' + pixels + ', "modality": ["visible"]}}',
                 '{"signature_name": "embed_images", "inputs": {"images": Infinity, "modality": ["visible"]}}'):
        _assert_clean_400(requests.post(url + "/v1/models/kdem:predict", data=body, timeout=30))
    unknown = {"instances": [{"image_bytes": {"b64": image}, "modality": "visible"}], "x" * 10_000: 1}
    assert "unknown field" in _assert_clean_400(requests.post(url + "/v1/models/kdem:predict", json=unknown,
                                                              timeout=30))
    extra = {"image": {"b64": image}, "modality": "visible", "k": 3, "kk": 1}
    assert "unknown field" in _assert_clean_400(requests.post(url + "/v1/models/kdem:search", json=extra,
                                                              timeout=30))
    row = {"instances": [{"image_bytes": {"b64": image}, "modality": "visible", "extra": 1}]}
    _assert_clean_400(requests.post(url + "/v1/models/kdem:predict", json=row, timeout=30))


def test_long_values_are_echoed_as_a_bounded_prefix(live, gallery_dir, gallery_files):
    url = live["url"]
    image = b64(_image(gallery_dir, gallery_files))
    huge = "s" * 1_000_000
    _assert_clean_400(requests.post(url + "/v1/models/kdem:predict", timeout=30,
                                    json={"signature_name": huge, "instances": [{"image_bytes": image,
                                                                                 "modality": "visible"}]}), 404)
    message = _assert_clean_400(requests.post(url + "/v1/models/kdem:predict", timeout=30,
                                              json={"instances": [{"image_bytes": image, "modality": huge}]}))
    assert "1000000 characters" in message
    _assert_clean_400(requests.post(url + "/v1/models/kdem:search", timeout=30,
                                    json={"image": image, "modality": "visible", "k": huge}))
    _assert_clean_400(requests.post(url + "/v1/models/kdem/labels/" + "l" * 5000 + ":predict", timeout=30,
                                    json={"instances": [{"image_bytes": image, "modality": "visible"}]}))
    _assert_clean_400(requests.get(url + "/v1/models/" + "m" * 5000, timeout=30), 404)


def test_the_server_still_answers_after_the_malformed_requests(live, gallery_dir, gallery_files):
    response = requests.post(live["url"] + "/v1/models/kdem:search", timeout=60,
                             json={"image": b64(_image(gallery_dir, gallery_files)), "modality": "visible", "k": 2})
    assert response.status_code == 200 and len(response.json()["results"][0]) == 2


def test_an_internal_failure_is_a_500_with_a_request_id_and_one_logged_traceback(caplog):
    app = FastAPI()
    app.add_middleware(InternalErrors)

    @app.get("/fails")
    async def fails():
        raise RuntimeError("a bug in the server, not the client's mistake")

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "path": "/fails",
             "raw_path": b"/fails", "query_string": b"", "headers": [], "scheme": "http", "root_path": "",
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
    with caplog.at_level(logging.ERROR):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 500
    message = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]
    assert message.startswith("internal error (request id ") and "RuntimeError" not in message
    request_id = message.split("request id ")[1].rstrip(")")
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and request_id in logged[0].getMessage()
    assert isinstance(logged[0].exc_info[1], RuntimeError)


def test_an_internal_grpc_failure_is_internal_with_a_request_id(model_base, gallery_dir, gallery_files, caplog,
                                                               monkeypatch):
    """A real ServingCore and gRPC server in this process; the core's predict made to fail as a bug would."""
    from serving.server.audit import NoAudit
    from serving.server.auth import OpenAccess
    from serving.server.core import ServingCore
    from serving.server.grpc_service import start_grpc_server

    core = ServingCore(model_base)
    core.load()

    async def broken_predict(*args, **kwargs):
        raise RuntimeError("a bug in the server, not the client's mistake")

    monkeypatch.setattr(core, "predict", broken_predict)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kdem"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([_image(gallery_dir, gallery_files)]))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"]))

    async def main():
        await core.start()
        server, port = await start_grpc_server(core, OpenAccess(), NoAudit(), "127.0.0.1", 0)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.Predict(request, timeout=30)
                return error.value
        finally:
            await server.stop(1)
            await core.stop()

    with caplog.at_level(logging.ERROR):
        error = asyncio.run(main())
    assert error.code() == grpc.StatusCode.INTERNAL and error.details().startswith("internal error (request id ")
    request_id = error.details().split("request id ")[1].rstrip(")")
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1 and request_id in logged[0].getMessage()
