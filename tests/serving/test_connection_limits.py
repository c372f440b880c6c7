"""Connection limits and timeouts on a live server (issue #24 item 5 / finding 8), loopback only.

Fixture `ops_server`: headers and body chunks within 1.5 s, 16 REST connections, 2 concurrent RPCs.
Fixture `slow_server` (the per-request deadline): a 3 s batching window against a 0.5 s
--request-timeout-s, so every embedding request is still queued when its deadline passes.
Every loop is bounded (socket counts, deadlines, timeouts on every call).
"""
import os
import select
import socket
import time

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.client.rest_client import b64
from tests.serving.conftest import start_server, stop_server

SLOW_CLIENTS = 200
HALF_HEADER = b"POST /v1/models/kdem:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le"


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server["rest_port"]), timeout=10)


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this socket (EOF or reset), without blocking."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, socket.timeout):
        return True


def _wait_all_closed(sockets, seconds: float) -> list:
    """Waits until the server closed every socket or `seconds` passed; the ones still open."""
    deadline, open_ = time.time() + seconds, list(sockets)
    while open_ and time.time() < deadline:
        open_ = [s for s in open_ if not _closed_by_server(s)]
        time.sleep(0.1)
    return open_


def test_half_sent_headers_are_closed_within_the_header_timeout(ops_server):
    sockets = []
    try:
        for _ in range(SLOW_CLIENTS):
            sock = _connect(ops_server)
            sock.sendall(HALF_HEADER)
            sockets.append(sock)
        start = time.time()
        still_open = _wait_all_closed(sockets, 1.5 + 8.0)
        assert not still_open, f"{len(still_open)} of {SLOW_CLIENTS} half-header sockets still open"
        assert time.time() - start < 1.5 + 8.0
        assert requests.get(ops_server["url"] + "/v1/models/kdem", timeout=30).status_code == 200
    finally:
        for sock in sockets:
            sock.close()


def test_a_stalled_body_is_closed_within_the_body_timeout(ops_server):
    with _connect(ops_server) as sock:
        sock.sendall(b"POST /v1/models/kdem:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"instances\": [")
        assert not _wait_all_closed([sock], 1.5 + 8.0), "a stalled body kept its connection"
    log = open(ops_server["log"]).read()
    assert "Traceback" not in log, log[-3000:]


def test_a_complete_slow_request_is_not_cut(ops_server):
    """Headers sent in pieces, each well within the timeout in total, are served."""
    with _connect(ops_server) as sock:
        for piece in (b"GET /v1/models/kdem HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", b"Connection: close\r\n\r\n"):
            sock.sendall(piece)
            time.sleep(0.3)
        answer = b""
        while not answer.endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_beyond_max_connections_rest_answers_503_at_once(ops_server):
    idle = [_connect(ops_server) for _ in range(16)]  # the limit: 16 connections
    try:
        time.sleep(0.2)
        start = time.time()
        response = requests.get(ops_server["url"] + "/v1/models/kdem", timeout=30)
        assert response.status_code == 503, response.text
        assert time.time() - start < 1.0
    finally:
        for sock in idle:
            sock.close()
    deadline = time.time() + 10
    while requests.get(ops_server["url"] + "/v1/models/kdem", timeout=30).status_code != 200:
        assert time.time() < deadline, "the server did not recover once the idle connections closed"
        time.sleep(0.2)


def test_beyond_max_concurrent_rpcs_grpc_answers_resource_exhausted(ops_server, gallery_dir, gallery_files):
    image = open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kdem"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image] * 8))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"] * 8))
    with grpc.insecure_channel(ops_server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(request, timeout=60)
        futures = [stub.Predict.future(request, timeout=60) for _ in range(12)]
        outcomes = []
        for future in futures:
            try:
                future.result()
                outcomes.append((grpc.StatusCode.OK, ""))
            except grpc.RpcError as e:
                outcomes.append((e.code(), e.details()))
    codes = [code for code, _ in outcomes]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, outcomes
    assert 1 <= codes.count(grpc.StatusCode.OK) and codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1, outcomes
    assert any("Concurrent RPC limit" in details for _, details in outcomes), outcomes  # not the queue's 429


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
