"""The live server over REST: TF Serving API, search, bad input, health, load with right answers.

The server runs as a subprocess (session fixture `server`: 2 MB bodies, 16 instances,
batches of 8, 8 queued requests, audit log on /dev/full). It is never changed here;
the version swap has its own server (test_version_swap.py).
"""
import concurrent.futures
import os

import numpy as np
import requests

from serving.client.load_test import load_test
from serving.client.rest_client import ServingClient, b64
from tests.serving.conftest import EMBEDDING_DIM


def _images(gallery_dir, gallery_files, count):
    return [open(os.path.join(gallery_dir, p), "rb").read() for p in gallery_files[:count]]


def test_status_and_metadata(server):
    client = ServingClient(server["url"])
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert client.status() == expected
    assert requests.get(server["url"] + "/v1/models/kdem/versions/1").json() == expected
    metadata = client.metadata()
    assert metadata["model_spec"] == {"name": "kdem", "signature_name": "", "version": "1"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {"serving_default", "embed_images", "serving_flip", "embed_images_flip", "search"}
    assert set(signatures["search"]["inputs"]) == {"image_bytes", "modality", "k"}
    assert set(signatures["search"]["outputs"]) == {"gallery_ids", "person_ids", "cameras", "scores", "paths"}
    inputs = signatures["serving_default"]["inputs"]
    assert set(inputs) == {"image_bytes", "modality"} and inputs["image_bytes"]["dtype"] == "DT_STRING"
    assert signatures["serving_default"]["outputs"]["embedding"]["tensor_shape"]["dim"][1]["size"] == str(EMBEDDING_DIM)
    assert signatures["serving_default"]["method_name"] == "tensorflow/serving/predict"


def test_predict_row_and_columnar(server, embedder, gallery_dir, gallery_files):
    client = ServingClient(server["url"])
    images = _images(gallery_dir, gallery_files, 3)
    modalities = ["visible", "infrared", "visible"]
    expected = embedder.embed_bytes(images, modalities)
    np.testing.assert_allclose(client.predict(images, modalities), expected, atol=1e-5)
    np.testing.assert_allclose(client.predict(images, modalities, columnar=True), expected, atol=1e-5)
    # The float-image signature, columnar, and a version-pinned URL.
    floats = np.stack([embedder.decode(b) for b in images])
    body = {"signature_name": "embed_images", "inputs": {"images": floats.tolist(), "modality": modalities}}
    outputs = ServingClient(server["url"], version=1).predict_raw(body)["outputs"]
    np.testing.assert_allclose(np.array(outputs), expected, atol=1e-5)


def test_search(server, gallery_dir, gallery_files):
    client = ServingClient(server["url"])
    images = _images(gallery_dir, gallery_files, 3)
    results = client.search(images, ["visible"] * 3, k=4)
    assert len(results) == 3
    for path, ranked in zip(gallery_files, results):
        assert len(ranked) == 4 and [r["rank"] for r in ranked] == [1, 2, 3, 4]
        assert ranked[0]["path"] == path.replace(os.sep, "/")
        assert ranked[0]["score"] >= ranked[-1]["score"]
        assert {"person_id", "camera", "modality", "index"} <= set(ranked[0])
    single = requests.post(server["url"] + "/v1/models/kdem:search",
                           json={"image": b64(images[0]), "modality": "infrared", "k": 2}).json()
    assert single["model_version"] == "1" and len(single["results"]) == 1 and len(single["results"][0]) == 2


def _post(server, path, **kwargs):
    return requests.post(server["url"] + path, timeout=30, **kwargs)


def test_bad_requests_get_their_code_and_the_server_keeps_serving(server, gallery_dir, gallery_files):
    image = b64(_images(gallery_dir, gallery_files, 1)[0])
    good = {"instances": [{"image_bytes": image, "modality": "visible"}]}
    predict = "/v1/models/kdem:predict"
    cases = [
        (predict, {"data": b"{not json"}, 400),
        (predict, {"json": [1, 2]}, 400),
        (predict, {"json": {"instances": [{"image_bytes": {"b64": "@@not base64@@"}, "modality": "visible"}]}}, 400),
        (predict, {"json": {"instances": [{"image_bytes": b64(b"not an image"), "modality": "visible"}]}}, 400),
        (predict, {"json": {"instances": [{"image_bytes": image, "modality": "thermal"}]}}, 400),
        (predict, {"json": {"instances": [{"image_bytes": [image, image], "modality": "visible"}]}}, 400),
        (predict, {"json": {"instances": [{"image_bytes": image}]}}, 400),
        (predict, {"json": {"instances": []}}, 400),
        (predict, {"json": {"instances": [{"image_bytes": image, "modality": "visible"}] * 17}}, 400),
        (predict, {"json": {"inputs": {"image_bytes": [image, image], "modality": ["visible"]}}}, 400),
        (predict, {"json": {"instances": good["instances"], "inputs": {}}}, 400),
        (predict, {"json": dict(good, signature_name="nope")}, 404),
        (predict, {"json": {"signature_name": "embed_images",
                            "inputs": {"images": np.zeros((1, 10, 10, 3)).tolist(), "modality": ["visible"]}}}, 400),
        (predict, {"json": {"signature_name": "embed_images",
                            "inputs": {"images": [["a"]], "modality": ["visible"]}}}, 400),
        (predict, {"data": b"{" + b" " * (3 << 20) + b"}"}, 413),
        ("/v1/models/other:predict", {"json": good}, 404),
        ("/v1/models/kdem/versions/9:predict", {"json": good}, 404),
        ("/v1/models/kdem/versions/x:predict", {"json": good}, 400),
        ("/v1/models/kdem:search", {"json": {"image": image}}, 400),
        ("/v1/models/kdem:search", {"json": {"image": image, "modality": "visible", "k": 0}}, 400),
        ("/v1/models/kdem:search", {"json": {"image": {"b64": "!!"}, "modality": "visible"}}, 400),
        ("/v1/models/kdem:search", {"json": {"image": b64(b"GIF89a junk"), "modality": "visible"}}, 400),
        ("/v1/models/kdem:search", {"data": b"[{"}, 400),
    ]
    for path, kwargs, code in cases:
        response = _post(server, path, **kwargs)
        assert response.status_code == code, (path, str(kwargs)[:200], response.text[:300])
        assert isinstance(response.json()["error"], str) and response.json()["error"]
    assert requests.get(server["url"] + "/v1/models/other").status_code == 404
    assert requests.get(server["url"] + "/v1/models/kdem/versions/3/metadata").status_code == 404
    assert _post(server, predict, json=good).status_code == 200
    assert requests.get(server["url"] + "/healthz").json()["status"] == "ok"


def test_liveness_and_readiness(server):
    health = requests.get(server["url"] + "/healthz").json()
    assert health["live"] is True and health["ready"] is True and health["models"] == {"kdem": 1}
    assert health["queue"]["max"] == 8
    ready = requests.get(server["url"] + "/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "models": {"kdem": 1}}


def test_a_bad_image_fails_only_its_own_request(server, gallery_dir, gallery_files):
    images = _images(gallery_dir, gallery_files, 8)
    bodies = [{"instances": [{"image_bytes": b64(img), "modality": "visible"}]} for img in images]
    bodies[3] = {"instances": [{"image_bytes": b64(images[3][:40]), "modality": "visible"}]}  # truncated JPEG
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda body: _post(server, "/v1/models/kdem:predict", json=body).status_code,
                              bodies))
    assert codes == [200, 200, 200, 400, 200, 200, 200, 200]


def test_load_every_answer_is_the_embedding_of_its_own_image(server, embedder, gallery_dir, gallery_files):
    """8 clients x 25 one-image requests over 16 different images, batched together: a batcher
    that swapped or shifted outputs between the requests of a batch would fail the comparison."""
    images = _images(gallery_dir, gallery_files, 16)
    expected = embedder.embed_bytes(images, ["visible"] * len(images))
    # Any two images differ by far more than the tolerance, so a swapped answer cannot pass.
    assert np.min(np.abs(expected[:, None] - expected[None]).max(-1) + np.eye(16)) > 1e-3
    report = load_test(server["url"], images, clients=8, requests_per_client=25, keep_outputs=True)
    print(f"\nload: {report['requests']} requests, {report['requests_per_s']:.1f} req/s, "
          f"p50 {report['p50_ms']:.1f} ms, p99 {report['p99_ms']:.1f} ms")
    assert report["errors"] == [] and report["requests"] == 200 and len(report["outputs"]) == 200
    for position, embedding in report["outputs"]:
        np.testing.assert_allclose(embedding, expected[position], atol=1e-4, err_msg=f"image {position}")
    sizes = requests.get(server["url"] + "/healthz").json()["batch_sizes"]
    assert max(sizes) > 1  # concurrent requests were batched
