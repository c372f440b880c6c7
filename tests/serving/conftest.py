"""Session fixtures for the serving tests: one small random-init run, exported once.

ResNet-50 is slow on a CPU, so the model is built, saved and exported once per session.
"""
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_SIZE = (64, 32)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A training run folder: inference_model.keras + run_info.json (random init, 64x32)."""
    from kdem_tf.model.model import build_kdem_models
    path = tmp_path_factory.mktemp("run")
    _, inference_model = build_kdem_models(num_classes=4, image_size=IMAGE_SIZE, non_local=False)
    inference_model.save(str(path / "inference_model.keras"))
    with open(path / "run_info.json", "w") as f:
        json.dump({"image_size": list(IMAGE_SIZE), "embedding_dim": 2048, "num_classes": 4, "dataset": "sysu"}, f)
    return str(path)


@pytest.fixture(scope="session")
def model_base(run_dir, tmp_path_factory):
    """TF Serving base path with version 1 of the embedder."""
    from serving.export import export_embedder
    base = str(tmp_path_factory.mktemp("models") / "kdem")
    export_embedder(run_dir, base)
    return base


def _pil_gallery(root: str) -> str:
    from PIL import Image
    rng = np.random.default_rng(0)
    for pid in range(1, 7):
        base = rng.integers(0, 255, (8, 4, 3))
        for camera in (1, 2):
            os.makedirs(os.path.join(root, f"cam{camera}", f"{pid:04d}"), exist_ok=True)
            for i in range(2):
                pixels = np.kron(base, np.ones((8, 8, 1))) + rng.normal(0, 20, (64, 32, 3))
                Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                    os.path.join(root, f"cam{camera}", f"{pid:04d}", f"{i + 1:04d}.jpg"))
    return root


@pytest.fixture(scope="session")
def gallery_dir(tmp_path_factory):
    """A small SYSU-layout image folder (synthetic generator when present, else PIL noise)."""
    out = str(tmp_path_factory.mktemp("gallery") / "sysu")
    try:
        from kdem_tf.data.synthetic import generate_sysu
        return generate_sysu(out, identities=6, seed=0, image_size=IMAGE_SIZE, images_per_camera=2, progress=False)
    except ImportError:
        return _pil_gallery(out)


@pytest.fixture(scope="session")
def gallery_files(gallery_dir):
    """Sorted relative paths of the gallery images."""
    names = []
    for root, _, files in os.walk(gallery_dir):
        names += [os.path.relpath(os.path.join(root, f), gallery_dir) for f in files if f.endswith(".jpg")]
    return sorted(names)


@pytest.fixture(scope="session")
def index_dir(model_base, gallery_dir, tmp_path_factory):
    from serving.index import build_index
    out = str(tmp_path_factory.mktemp("index") / "gallery")
    build_index(model_base, gallery_dir, out, progress=False)
    return out


@pytest.fixture(scope="session")
def embedder(model_base):
    from serving.embedder import Embedder
    return Embedder(model_base)


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_base, index_dir, tmp_path_factory):
    """A live `python -m serving.server` on a free port, over a copy of the model base."""
    base = str(tmp_path_factory.mktemp("served") / "kdem")
    shutil.copytree(model_base, base)
    port = free_port()
    log_path = str(tmp_path_factory.mktemp("logs") / "server.log")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.server", "--model-base", base, "--index", index_dir,
             "--port", str(port), "--poll-seconds", "0.5", "--max-body-mb", "2", "--max-instances", "16"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{open(log_path).read()[-3000:]}")
            try:
                if requests.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                pytest.fail(f"server did not start:\n{open(log_path).read()[-3000:]}")
            time.sleep(0.5)
        yield {"url": url, "base": base, "process": process, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
