"""Prometheus metrics at /monitoring/prometheus/metrics (issue #24 item 7), parsed from the exposition text."""
import os

import grpc
import requests
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.client.rest_client import b64
from serving.server.metrics import METRICS_PATH
from tests.serving.conftest import TOKENS


def scrape(server, **kwargs) -> dict:
    """{(sample name, sorted label items): value} of one scrape."""
    response = requests.get(server["url"] + METRICS_PATH, timeout=30, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_requests_on_both_transports(ops_server, gallery_dir, gallery_files):
    image = open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()
    before = scrape(ops_server)
    body = {"instances": [{"image_bytes": b64(image), "modality": "visible"}] * 3}
    for _ in range(2):
        assert requests.post(ops_server["url"] + "/v1/models/kdem:predict", json=body, timeout=60).status_code == 200
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kdem"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["infrared"]))
    with grpc.insecure_channel(ops_server["grpc"]) as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    odd = requests.post(ops_server["url"] + "/v1/models/kdem:predict", timeout=60,
                        json=dict(body, signature_name="no-such-signature-" + "x" * 200))
    assert odd.status_code == 404
    after = scrape(ops_server)

    rest_ok = dict(model="kdem", signature="serving_default", transport="rest", status="OK")
    grpc_ok = dict(rest_ok, transport="grpc")
    assert value(after, "kdem_serving_requests_total", **rest_ok) - value(before, "kdem_serving_requests_total",
                                                                           **rest_ok) == 2
    assert value(after, "kdem_serving_requests_total", **grpc_ok) - value(before, "kdem_serving_requests_total",
                                                                           **grpc_ok) == 1
    other = dict(model="kdem", signature="other", transport="rest", status="NOT_FOUND")
    assert value(after, "kdem_serving_requests_total", **other) - value(before, "kdem_serving_requests_total",
                                                                         **other) == 1  # a bounded label
    latency = dict(model="kdem", signature="serving_default", transport="rest")
    assert value(after, "kdem_serving_request_latency_seconds_count", **latency) - \
        value(before, "kdem_serving_request_latency_seconds_count", **latency) == 2
    assert value(after, "kdem_serving_request_latency_seconds_sum", **latency) > \
        value(before, "kdem_serving_request_latency_seconds_sum", **latency)
    assert value(after, "kdem_serving_batch_size_sum") - value(before, "kdem_serving_batch_size_sum") == 3 + 3 + 1
    assert value(after, "kdem_serving_batched_images_total") - value(before, "kdem_serving_batched_images_total") == 7
    assert value(after, "kdem_serving_batch_latency_seconds_count") > value(before,
                                                                           "kdem_serving_batch_latency_seconds_count")
    assert value(after, "kdem_serving_queue_waiting") == 0 and value(after, "kdem_serving_queue_max") == 64
    for name in ("kdem_serving_shed_requests_total", "kdem_serving_dropped_requests_total"):
        assert (name, ()) in after, name
    assert value(after, "kdem_serving_model_version", model="kdem") >= 1


def test_warm_up_was_replayed_before_ready(ops_server):
    samples = scrape(ops_server)
    assert value(samples, "kdem_serving_warmup_requests_total", model="kdem", version="1") == 4
    log = open(ops_server["log"]).read()
    replayed, ready = log.find("model version 1: warm-up replayed 4 requests"), log.find("serving: rest=")
    assert 0 <= replayed < ready, log[-3000:]


def test_metrics_need_a_token_when_tokens_are_on(secure_server):
    url = secure_server["url"] + METRICS_PATH
    assert requests.get(url, verify=secure_server["ca_cert"], timeout=30).status_code == 401
    assert requests.get(url, verify=secure_server["ca_cert"], timeout=30,
                        headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    samples = scrape(secure_server, verify=secure_server["ca_cert"],
                     headers={"Authorization": f"Bearer {TOKENS['search-ui']}"})
    assert value(samples, "kdem_serving_requests_total", model="other", signature="", transport="rest",
                 status="UNAUTHENTICATED") >= 2
