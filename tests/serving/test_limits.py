"""Bounded resources per request (#24 findings 1, 2, 3), on the parts and against a live server.

Live server: fixture `limited_server` (conftest: --max-queue 4, --max-queue-images 16, 16
instances, batches of 8), loopback only. Every loop is bounded (a burst of 40 calls, a few
requests) and every call has a timeout; the server's memory is read from /proc/<pid>/status.
"""
import asyncio
import concurrent.futures
import io
import os
import struct
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.client.rest_client import b64
from serving.server.batching import MicroBatcher
from serving.server.errors import ServingError
from serving.server.image_header import ImageHeaderError, image_size
from serving.server.request_checks import check_image_pixels, check_tensor_proto
from tests.serving.conftest import EXTRA_MODEL, LIMITED_MAX_QUEUE, grpc_codes, rss_bytes

MB = 1 << 20
BOMB_SIDE = 12000


def _encoded(pixels: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    """A real PNG of 12000x12000 one-colour RGB pixels (432 MB decoded), compressed row by row: ~420 KB."""
    compressor, parts = zlib.compressobj(9), []
    row = bytes(1 + 3 * BOMB_SIDE)  # filter byte 0, then black pixels
    for _ in range(BOMB_SIDE):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", BOMB_SIDE, BOMB_SIDE, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def _image(gallery_dir, gallery_files) -> bytes:
    return open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()


# ----------------------------------------------------------------------------- the parts


@pytest.mark.parametrize("fmt,options", [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}),
                                         ("BMP", {}), ("JPEG", {"exif": b"Exif\x00\x00" + bytes(3000)})])
def test_header_sizes_equal_pils(fmt, options):
    pixels = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    assert image_size(_encoded(pixels, fmt, **options)) == (fmt, 53, 37)


def test_bad_headers_are_refused_with_their_reason(png_bomb):
    assert image_size(png_bomb) == ("PNG", BOMB_SIDE, BOMB_SIDE)
    gif = _encoded(np.zeros((4, 4, 3), np.uint8), "GIF")
    cases = {gif: "unknown header", png_bomb[:20]: "IHDR", b"\xff\xd8\xff\xe0\x00\x10JFIF": "cut short",
             b"\xff\xd8\xff\xda\x00\x08": "no start-of-frame", b"BM" + bytes(10): "cut short",
             png_bomb[:16] + bytes(8): "empty size"}
    for data, reason in cases.items():
        with pytest.raises(ImageHeaderError, match=reason):
            image_size(data)


def test_pixel_limit_names_the_image_and_its_size(png_bomb):
    small = _encoded(np.zeros((8, 8, 3), np.uint8), "PNG")
    check_image_pixels([small, small], 64)
    with pytest.raises(ServingError) as error:
        check_image_pixels([small, png_bomb], 4096 * 4096)
    assert error.value.code == "INVALID_ARGUMENT"
    assert "image_bytes[1]" in error.value.message and "12000x12000" in error.value.message


def test_declared_tensor_sizes_are_checked_before_expansion():
    spec = tf.TensorSpec([None, 64, 32, 3], tf.float32)
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s)
                                                   for s in (2, 64, 32, 3)])
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.0], tensor_shape=shape)
    with pytest.raises(ServingError, match="holds 12288 values but 1 given"):
        check_tensor_proto(proto, spec, "images", 16)
    proto.tensor_shape.dim[0].size = 100
    with pytest.raises(ServingError, match="batch of 100: at most 16"):
        check_tensor_proto(proto, spec, "images", 16)
    proto.tensor_shape.dim[1].size = 4000
    with pytest.raises(ServingError, match="does not match the signature"):
        check_tensor_proto(proto, spec, "images", 16)
    good = tf.make_tensor_proto(np.zeros((2, 64, 32, 3), np.float32))
    check_tensor_proto(good, spec, "images", 16)  # what real clients send passes
    good.tensor_content = good.tensor_content[:-2]
    with pytest.raises(ServingError, match="a partial value"):
        check_tensor_proto(good, spec, "images", 16)


def test_the_queue_is_bounded_in_images_and_reservations_are_given_back():
    async def main():
        batcher = MicroBatcher(lambda key, requests: requests, window_ms=0, max_batch=64, max_queue=8,
                               max_queue_images=16)
        batcher.reserve(40)  # one request alone always fits, however large
        with pytest.raises(ServingError, match="40 images"):
            batcher.reserve(1)
        batcher.release(40)
        batcher.reserve(10)
        with pytest.raises(ServingError) as error:
            batcher.reserve(7)
        assert error.value.code == "RESOURCE_EXHAUSTED" and batcher.shed == 2
        batcher.reserve(6)
        assert (batcher.waiting, batcher.waiting_images) == (2, 16)

    asyncio.run(asyncio.wait_for(main(), 10))


# ----------------------------------------------------------------------------- live server


def test_decode_bomb_is_a_fast_400_without_memory_growth(limited_server, png_bomb):
    """Finding 1: the 12000x12000 PNG was decoded (+2.3 GB); now refused from its header."""
    assert 300_000 < len(png_bomb) < 600_000
    before = rss_bytes(limited_server["pid"])
    body = {"instances": [{"image_bytes": b64(png_bomb), "modality": "visible"}]}
    for _ in range(2):  # two at once killed the server before
        start = time.perf_counter()
        response = requests.post(limited_server["url"] + "/v1/models/kdem:predict", json=body, timeout=30)
        assert time.perf_counter() - start < 1.0
        assert response.status_code == 400 and "12000x12000" in response.json()["error"]
    search = requests.post(limited_server["url"] + "/v1/models/kdem:search",
                           json={"image": b64(png_bomb), "modality": "visible", "k": 3}, timeout=30)
    assert search.status_code == 400 and "--max-image-pixels" in search.json()["error"]
    with grpc.insecure_channel(limited_server["grpc"]) as channel:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "kdem"
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([png_bomb]))
        request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"]))
        with pytest.raises(grpc.RpcError) as error:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rss_bytes(limited_server["pid"]) - before < 100 * MB


def test_grpc_tensor_expansion_is_invalid_argument_without_memory_growth(limited_server, gallery_dir,
                                                                          gallery_files):
    """Finding 2: a 93-byte Predict declaring images [10, 4000, 4000, 3] with one float_val was expanded
    to 1.9 GB by tf.make_ndarray; now refused from its declared shape, and the server stays responsive."""
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s)
                                                   for s in (10, 4000, 4000, 3)])
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "kdem"
    request.model_spec.signature_name = "embed_images"
    request.inputs["images"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape,
                                                             float_val=[1.0]))
    request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"] * 10))
    assert request.ByteSize() < 200
    before = rss_bytes(limited_server["pid"])
    with grpc.insecure_channel(limited_server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(3):
            start = time.perf_counter()
            with pytest.raises(grpc.RpcError) as error:
                stub.Predict(request, timeout=30)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value.details()
            assert time.perf_counter() - start < 1.0
        request.inputs["images"].tensor_shape.dim[1].size = 64  # the signature's own shape: the count is wrong
        request.inputs["images"].tensor_shape.dim[2].size = 32
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, timeout=30)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "1 given" in error.value.details()
        good = predict_pb2.PredictRequest()
        good.model_spec.name = "kdem"
        good.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([_image(gallery_dir, gallery_files)]))
        good.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"]))
        assert stub.Predict(good, timeout=60).outputs["embedding"].tensor_shape.dim[0].size == 1
    assert rss_bytes(limited_server["pid"]) - before < 100 * MB


def _burst(count, call):
    start = threading.Barrier(count)

    def run(i):
        start.wait(30)
        return call(i)

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_flip_signatures_go_through_the_bounded_queue(limited_server, gallery_dir, gallery_files):
    """Finding 3: 40 concurrent serving_flip calls against --max-queue 4 all got 200 and /healthz did not
    move; now they share the queue: 200s and 429s only, and the shed counter counts the 429s."""
    url = limited_server["url"]
    shed_before = requests.get(url + "/healthz", timeout=10).json()["queue"]["shed"]
    image = b64(_image(gallery_dir, gallery_files))
    body = {"signature_name": "serving_flip", "instances": [{"image_bytes": image, "modality": "visible"}]}

    def call(_):
        with requests.Session() as session:
            response = session.post(url + "/v1/models/kdem:predict", json=body, timeout=120)
            return response.status_code, response.headers.get("Retry-After")

    results = _burst(40, call)
    codes = [code for code, _ in results]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
    assert all(retry == "1" for code, retry in results if code == 429)
    queue = requests.get(url + "/healthz", timeout=10).json()["queue"]
    assert queue["shed"] - shed_before >= codes.count(429)
    assert queue["waiting"] == 0 and queue["waiting_images"] == 0 and queue["max"] == LIMITED_MAX_QUEUE


def test_grpc_flip_and_search_bursts_are_shed_too(limited_server, gallery_dir, gallery_files):
    image = _image(gallery_dir, gallery_files)
    with grpc.insecure_channel(limited_server["grpc"]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature in ("embed_images_flip", "search"):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "kdem"
            request.model_spec.signature_name = signature
            request.inputs["modality"].CopyFrom(tf.make_tensor_proto(["visible"]))
            if signature == "search":
                request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
                request.inputs["k"].CopyFrom(tf.make_tensor_proto(3, tf.int32))
            else:
                request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 64, 32, 3), np.float32)))
            codes = grpc_codes([stub.Predict.future(request, timeout=120) for _ in range(40)])
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, (signature, codes)
            assert grpc.StatusCode.OK in codes and grpc.StatusCode.RESOURCE_EXHAUSTED in codes, (signature, codes)


def test_large_requests_are_shed_by_the_image_bound(limited_server, gallery_dir, gallery_files):
    """12-image requests against --max-queue-images 16: the queue refuses the second while one waits,
    though fewer than --max-queue requests are queued; the 429 names the image count."""
    url = limited_server["url"]
    image = b64(_image(gallery_dir, gallery_files))
    body = {"instances": [{"image_bytes": image, "modality": "visible"}] * 12}

    def call(_):
        with requests.Session() as session:
            response = session.post(url + "/v1/models/kdem:predict", json=body, timeout=120)
            return response.status_code, response.json()

    results = _burst(6, call)
    codes = [code for code, _ in results]
    assert set(codes) <= {200, 429} and codes.count(200) >= 1 and codes.count(429) >= 1, codes
    assert all("--max-queue-images 16" in answer["error"] for code, answer in results if code == 429)
    assert all(len(answer["predictions"]) == 12 for code, answer in results if code == 200)


def test_extra_models_go_through_the_same_queue_and_checks(limited_server, gallery_dir, gallery_files, png_bomb):
    """An extra model (here the embedder served as any SavedModel) shares the bounded queue: a burst of
    40 gets 200s and 429s only; its answer equals the embedder's; its encoded images are header-checked."""
    url = limited_server["url"]
    image = b64(_image(gallery_dir, gallery_files))
    body = {"instances": [{"image_bytes": image, "modality": "visible"}]}
    expected = requests.post(url + "/v1/models/kdem:predict", json=body, timeout=120).json()["predictions"]
    got = requests.post(url + f"/v1/models/{EXTRA_MODEL}:predict", json=body, timeout=120).json()["predictions"]
    np.testing.assert_allclose(got, expected, atol=1e-5)

    def call(_):
        with requests.Session() as session:
            return session.post(url + f"/v1/models/{EXTRA_MODEL}:predict", json=body, timeout=120).status_code

    codes = _burst(40, call)
    assert set(codes) <= {200, 429} and codes.count(200) >= 1 and codes.count(429) >= 1, codes
    bomb = {"instances": [{"image_bytes": b64(png_bomb), "modality": "visible"}]}
    response = requests.post(url + f"/v1/models/{EXTRA_MODEL}:predict", json=bomb, timeout=30)
    assert response.status_code == 400 and "12000x12000" in response.json()["error"]
