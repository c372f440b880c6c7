"""Hot version swap on its own server: version 2 (other weights) is served, search stays on the
index's version 1, and a corrupt version 3 leaves version 2 serving."""
import os
import shutil
import time

import numpy as np
import pytest
import requests

from serving.client.rest_client import ServingClient, b64
from serving.client.grpc_client import GrpcClient
from tests.conftest import TEST_STAGE_BLOCKS
from tests.serving.conftest import IMAGE_SIZE, MODEL_WIDTH, start_server, stop_server


@pytest.fixture(scope="module")
def swap_server(model_base, index_dir, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("swap") / "kdem")
    shutil.copytree(model_base, base)
    server = start_server(["--model-base", base, "--index", index_dir, "--poll-seconds", "0.3"],
                          tmp_path_factory.mktemp("swap-server"))
    try:
        yield dict(server, base=base)
    finally:
        stop_server(server)


def _wait_for(condition, what: str, server, timeout: float = 120.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what}:\n{open(server['log']).read()[-2000:]}"
        time.sleep(0.3)


def test_v2_is_served_search_stays_pinned_and_a_corrupt_v3_is_skipped(swap_server, embedder, index_dir,
                                                                       gallery_dir, gallery_files):
    from kdem_tf.config import ModelConfig
    from kdem_tf.model.model import build_kdem_models
    from serving.export.embedder import Embedder
    from serving.export.saved_model import export_embedder
    from serving.export.gallery_index import load_index
    images = [open(os.path.join(gallery_dir, p), "rb").read() for p in gallery_files[:4]]
    modalities = ["visible", "infrared", "visible", "infrared"]
    rest = ServingClient(swap_server["url"])
    v1 = embedder.embed_bytes(images, modalities)
    np.testing.assert_allclose(rest.predict(images, modalities), v1, atol=1e-5)

    # Version 2: a freshly initialised network (other weights), exported atomically beside version 1.
    _, other = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=MODEL_WIDTH, stage_blocks=TEST_STAGE_BLOCKS), 4, IMAGE_SIZE)
    export_embedder(other, swap_server["base"], version=2)
    v2 = Embedder(swap_server["base"], 2).embed_bytes(images, modalities)
    assert np.abs(v2 - v1).max() > 1e-2  # the versions really differ
    _wait_for(lambda: rest.status()["model_version_status"][0]["version"] == "2", "version 2 not served",
              swap_server)
    np.testing.assert_allclose(rest.predict(images, modalities), v2, atol=1e-5)
    np.testing.assert_allclose(GrpcClient(swap_server["grpc"]).predict(images, modalities), v2, atol=1e-5)
    assert requests.get(swap_server["url"] + "/v1/models/kdem/versions/1").status_code == 404

    # Search is still embedded with version 1, the version the index was built with.
    index = load_index(index_dir)
    indices, scores = index.search(v1, 3)
    answer = requests.post(swap_server["url"] + "/v1/models/kdem:search", timeout=60,
                           json=[{"image": b64(i), "modality": m,
                                  "k": 3} for i, m in zip(images, modalities)]).json()
    assert answer["model_version"] == "1"
    assert [[r["index"] for r in row] for row in answer["results"]] == indices.tolist()
    np.testing.assert_allclose([[r["score"] for r in row] for row in answer["results"]], scores, atol=1e-5)
    assert GrpcClient(swap_server["grpc"]).search(images[:1], modalities[:1], k=3)[0][0]["index"] == indices[0, 0]

    # Version 3 is corrupt: it is skipped, version 2 keeps serving.
    temp = os.path.join(swap_server["base"], ".tmp-3-corrupt")
    shutil.copytree(os.path.join(swap_server["base"], "2"), temp)
    with open(os.path.join(temp, "saved_model.pb"), "wb") as f:
        f.write(b"\x00not a SavedModel")
    os.rename(temp, os.path.join(swap_server["base"], "3"))
    _wait_for(lambda: "cannot load version 3" in open(swap_server["log"]).read(), "version 3 not tried",
              swap_server)
    assert rest.status()["model_version_status"][0]["version"] == "2"
    np.testing.assert_allclose(rest.predict(images, modalities), v2, atol=1e-5)
    assert requests.get(swap_server["url"] + "/readyz").status_code == 200
    assert swap_server["process"].poll() is None
