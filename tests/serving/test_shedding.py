"""Load shedding on the live server: a bounded burst beyond --max-queue gets 429 / RESOURCE_EXHAUSTED at once.

Fixture `server`: batches of 8, at most 8 queued requests. Each burst is 48 requests
sent at once (bounded in count; every call has a 60 s timeout), loopback only.
"""
import concurrent.futures
import os
import threading
import time

import grpc
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.client.rest_client import b64

BURST = 48


def _image(gallery_dir, gallery_files):
    return open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()


def test_rest_overload_gets_only_429_with_retry_after(server, gallery_dir, gallery_files):
    body = {"instances": [{"image_bytes": b64(_image(gallery_dir, gallery_files)), "modality": "visible"}]}
    start = threading.Barrier(BURST)

    def call(_):
        with requests.Session() as session:
            start.wait(30)
            response = session.post(server["url"] + "/v1/models/kdem:predict", json=body, timeout=60)
            return response.status_code, response.headers.get("Retry-After"), response.elapsed.total_seconds()

    with concurrent.futures.ThreadPoolExecutor(BURST) as pool:
        results = list(pool.map(call, range(BURST)))
    codes = [code for code, _, _ in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    assert all(retry == "1" for code, retry, _ in results if code == 429)
    health = requests.get(server["url"] + "/healthz").json()
    assert health["queue"]["shed"] >= codes.count(429) and health["queue"]["waiting"] == 0
    assert requests.post(server["url"] + "/v1/models/kdem:predict", json=body, timeout=60).status_code == 200


def test_grpc_overload_gets_only_resource_exhausted(server, gallery_dir, gallery_files):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kdem"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([_image(gallery_dir, gallery_files)]))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"]))
    with grpc.insecure_channel(server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(request, timeout=60)  # connected and warm
        futures = [stub.Predict.future(request, timeout=60) for _ in range(BURST)]
        codes = []
        for future in futures:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert stub.Predict(request, timeout=60).outputs["embedding"].tensor_shape.dim[0].size == 1


def _request(image: bytes, count: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kdem"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image] * count))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"] * count))
    return request


def test_a_grpc_call_past_its_deadline_is_dropped_before_compute(server, gallery_dir, gallery_files):
    """Calls whose deadline passes while they wait behind two long batches are never computed.

    The followers wait about two batch times and have half of one as their deadline."""
    image = _image(gallery_dir, gallery_files)
    long_request, short_request = _request(image, 16), _request(image, 1)
    with grpc.insecure_channel(server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(short_request, timeout=60)  # connected
        before = requests.get(server["url"] + "/healthz").json()["queue"]
        stub.Predict(long_request, timeout=60)  # warm
        start = time.perf_counter()
        stub.Predict(long_request, timeout=60)  # how long a 16-image batch takes here
        long_seconds = time.perf_counter() - start
        leaders = [stub.Predict.future(long_request, timeout=60) for _ in range(2)]
        deadline = time.time() + 20
        while requests.get(server["url"] + "/healthz").json()["queue"]["waiting"] < 1:  # one computes, one waits
            assert time.time() < deadline, "the leaders never queued"
            time.sleep(0.005)
        followers = [stub.Predict.future(short_request, timeout=long_seconds / 2) for _ in range(4)]
        for future in leaders:
            future.result()
        codes = []
        for future in followers:
            try:
                future.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
    assert grpc.StatusCode.DEADLINE_EXCEEDED in codes, (codes, long_seconds)
    after = requests.get(server["url"] + "/healthz").json()["queue"]
    dropped = after["dropped"] - before["dropped"]
    assert 1 <= dropped <= codes.count(grpc.StatusCode.DEADLINE_EXCEEDED), (codes, before, after)
    # Each follower was either computed or dropped, never both: the model saw the two timing
    # calls, the two leaders and the followers that were not dropped.
    assert after["computed"] - before["computed"] == 4 * 16 + len(followers) - dropped, (codes, before, after)


def test_a_rest_request_whose_client_disconnects_is_dropped_before_compute(server, gallery_dir, gallery_files):
    """REST followers queued behind three long batches whose clients close their connection are never computed."""
    import json
    import socket
    from urllib.parse import urlparse

    image = _image(gallery_dir, gallery_files)
    url = server["url"] + "/v1/models/kdem:predict"
    long_body = {"instances": [{"image_bytes": b64(image), "modality": "visible"}] * 16}
    short_body = json.dumps({"instances": [{"image_bytes": b64(image), "modality": "visible"}]}).encode()
    requests.post(url, json=long_body, timeout=60)  # warm
    before = requests.get(server["url"] + "/healthz").json()["queue"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        leaders = [pool.submit(requests.post, url, json=long_body, timeout=60) for _ in range(3)]
        deadline = time.time() + 20
        while requests.get(server["url"] + "/healthz").json()["queue"]["waiting"] < 2:  # one computes, two wait
            assert time.time() < deadline, "the leaders never queued"
            time.sleep(0.005)
        address = urlparse(server["url"])
        followers = []
        for _ in range(3):  # sent whole, then the connection is closed: the client has gone
            sock = socket.create_connection((address.hostname, address.port), timeout=10)
            sock.sendall(b"POST /v1/models/kdem:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(short_body) + short_body)
            followers.append(sock)
        deadline = time.time() + 20
        while requests.get(server["url"] + "/healthz").json()["queue"]["waiting"] < 2 + len(followers):
            assert time.time() < deadline, "the followers never queued"
            time.sleep(0.005)
        for sock in followers:
            sock.close()
        assert all(future.result().status_code == 200 for future in leaders)
    deadline = time.time() + 20
    while requests.get(server["url"] + "/healthz").json()["queue"]["waiting"] > 0:
        assert time.time() < deadline, "the queue never drained"
        time.sleep(0.01)
    after = requests.get(server["url"] + "/healthz").json()["queue"]
    assert after["dropped"] - before["dropped"] == len(followers), (before, after)
    assert after["computed"] - before["computed"] == 3 * 16, (before, after)  # the leaders only
