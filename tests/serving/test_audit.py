"""The audit log: one JSON line per predict/search without image bytes or tokens; a full disk fails open.

`secure_server` writes its audit log to a file; `server` writes it to /dev/full (a disk
that is always full): it must keep serving and report the failure once.
"""
import json
import os
import threading
import time

import grpc
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.server.audit import AuditLog
from serving.client.rest_client import ServingClient, b64
from tests.serving.conftest import TOKENS

GOOD = TOKENS["search-ui"]


def _lines(path, count, timeout=30.0):
    deadline = time.time() + timeout
    while True:
        lines = open(path).read().splitlines() if os.path.exists(path) else []
        if len(lines) >= count or time.time() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.1)


def test_a_search_on_each_transport_is_audited(secure_server, gallery_dir, gallery_files):
    image = open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()
    before = len(_lines(secure_server["audit_log"], 0, 0))
    rest = ServingClient(secure_server["url"], token=GOOD, ca_cert=secure_server["ca_cert"])
    results = rest.search([image], ["infrared"], k=3)[0]
    with open(secure_server["ca_cert"], "rb") as f:
        channel = grpc.secure_channel(secure_server["grpc"], grpc.ssl_channel_credentials(root_certificates=f.read()))
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "kdem", "search"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["infrared"]))
    request.inputs["k"].CopyFrom(tf.make_tensor_proto(3, tf.int32))
    with channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, metadata=(("authorization", f"Bearer {TOKENS['batch-job']}"),), timeout=60)
    lines = _lines(secure_server["audit_log"], before + 2)[before:]
    assert [line["transport"] for line in lines] == ["rest", "grpc"]
    for line, token_name in zip(lines, ("search-ui", "batch-job")):
        assert line["token_name"] == token_name and line["status"] == "OK"
        assert (line["model"], line["version"], line["signature"], line["instances"], line["k"]) == \
            ("kdem", 1, "search", 1, 3)
        assert line["gallery_ids"] == [[r["index"] for r in results]]
        assert line["person_ids"] == [[r["person_id"] for r in results]]
        assert line["client"].endswith(tuple(f":{p}" for p in range(1, 65536))) and "127.0.0.1" in line["client"]
        assert line["latency_ms"] > 0 and abs(line["time"] - time.time()) < 300
    text = open(secure_server["audit_log"]).read()
    assert b64(image)["b64"][:40] not in text and all(token not in text for token in TOKENS.values())


def test_a_refused_request_is_audited_with_its_status(secure_server):
    before = len(_lines(secure_server["audit_log"], 0, 0))
    response = requests.post(secure_server["url"] + "/v1/models/kdem/versions/7:predict",
                             json={"instances": [{"image_bytes": {"b64": ""}, "modality": "visible"}]},
                             headers={"Authorization": f"Bearer {GOOD}"}, verify=secure_server["ca_cert"], timeout=30)
    assert response.status_code == 404
    line = _lines(secure_server["audit_log"], before + 1)[before]
    assert line["status"] == "NOT_FOUND" and line["token_name"] == "search-ui"


def test_a_full_disk_is_reported_once_and_the_service_keeps_serving(server, gallery_dir, gallery_files):
    body = {"instances": [{"image_bytes": b64(open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()),
                           "modality": "visible"}]}
    for _ in range(3):
        assert requests.post(server["url"] + "/v1/models/kdem:predict", json=body, timeout=60).status_code == 200
    deadline = time.time() + 30
    while not requests.get(server["url"] + "/healthz").json()["audit"]["lost"] >= 3:
        assert time.time() < deadline
        time.sleep(0.1)
    audit = requests.get(server["url"] + "/healthz").json()["audit"]
    assert audit["failing"] is True and audit["written"] == 0
    assert "/dev/full" not in requests.get(server["url"] + "/healthz").text  # no file paths in open health checks
    reports = [line for line in open(server["log"]).read().splitlines() if "audit log /dev/full" in line]
    assert len(reports) == 1 and "No space left on device" in reports[0] and "fails open" in reports[0]


def test_record_never_blocks_on_a_stuck_writer_and_counts_what_it_loses(tmp_path):
    """The log is a FIFO nobody reads yet: the writer thread blocks opening it, as on a hung disk."""
    fifo = str(tmp_path / "audit.fifo")
    os.mkfifo(fifo)
    audit = AuditLog(fifo, max_pending=4)
    start = time.perf_counter()
    for i in range(1000):
        audit.record(i=i)
    assert time.perf_counter() - start < 2.0  # 1000 records queued or dropped, none waited for the disk
    assert audit.lost >= 995 and audit.written == 0
    with open(fifo, "rb") as reader:  # the disk comes back
        closer = threading.Thread(target=audit.close)
        closer.start()
        lines = reader.read().decode().splitlines()
        closer.join(10)
    assert audit.written == 1000 - audit.lost == len(lines)
    assert [json.loads(line)["i"] for line in lines] == sorted(json.loads(line)["i"] for line in lines)
