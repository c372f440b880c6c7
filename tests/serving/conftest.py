"""Session fixtures for the serving tests: one small random-init run, exported once.

ResNet-50 is slow on a CPU, so the model is built, saved and exported once per session.
"""
import io
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from tests.conftest import shared_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE_SIZE = (64, 32)
# model.width of the session model (the tests read the embedding width from EMBEDDING_DIM, not 2048).
# Kept at 1 (ResNet-50): at 0.25 test_shedding's disconnect test failed ("the followers never
# queued": its three 16-image leader batches computed before the followers arrived; #16).
MODEL_WIDTH = 1.0
EMBEDDING_DIM = int(2048 * MODEL_WIDTH)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A training run folder: inference_model.keras + run_info.json (random init, seed 0, 64x32, MODEL_WIDTH),
    built once and shared by the test processes (read only).

    Seeded, so that every session tests the same weights (test_tflite's int8 closeness depends on them).
    """
    def build(path):
        import keras

        from kdem_tf.config import ModelConfig

        from kdem_tf.model.model import build_kdem_models
        keras.utils.set_random_seed(0)
        _, inference_model = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=MODEL_WIDTH), 4, IMAGE_SIZE)
        inference_model.save(str(path / "inference_model.keras"))
        with open(path / "run_info.json", "w") as f:
            json.dump({"image_size": list(IMAGE_SIZE), "embedding_dim": EMBEDDING_DIM, "num_classes": 4,
                       "dataset": "sysu"}, f)

    return shared_path(tmp_path_factory, "serving_run", build)


@pytest.fixture(scope="session")
def model_base(run_dir, tmp_path_factory):
    """TF Serving base path with version 1 of the embedder (shared, read only: a test that adds
    versions copies it)."""
    from serving.export.saved_model import export_embedder
    folder = shared_path(tmp_path_factory, "serving_models", lambda path: export_embedder(run_dir, str(path / "kdem")))
    return os.path.join(folder, "kdem")


@pytest.fixture(scope="session")
def gallery_dir(tiny_sysu):
    """The session's tiny SYSU-layout folder (tests/conftest.py: 6 ids, 2 images per camera)."""
    return tiny_sysu


@pytest.fixture(scope="session")
def gallery_files(gallery_dir):
    """Sorted relative paths of the gallery images."""
    names = []
    for root, _, files in os.walk(gallery_dir):
        names += [os.path.relpath(os.path.join(root, f), gallery_dir) for f in files if f.endswith(".jpg")]
    return sorted(names)


@pytest.fixture(scope="session")
def index_dir(model_base, gallery_dir, tmp_path_factory):
    from serving.export.gallery_index import build_index

    def build(path):
        build_index(model_base, gallery_dir, str(path / "gallery"), progress=False)

    return os.path.join(shared_path(tmp_path_factory, "serving_index", build), "gallery")


@pytest.fixture(scope="session")
def embedder(model_base):
    from serving.export.embedder import Embedder
    return Embedder(model_base)


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def start_server(args, folder, timeout: float = 180.0, env=None) -> dict:
    """Starts `python -m serving.server ARGS --port 0 --grpc-port auto` and waits until it serves.

    The ports are read back from the server's --ready-file (bound by the server itself: no
    free-port race). Returns {"url", "grpc", "process", "log", "rest_port", "grpc_port"};
    stop it with `stop_server`.
    """
    folder = str(folder)
    ready_file = os.path.join(folder, "ready.json")
    log_path = os.path.join(folder, "server.log")
    env = dict(env or os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [sys.executable, "-m", "serving.server", "--port", "0", "--grpc-port", "auto",
               "--ready-file", ready_file] + [str(a) for a in args]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while not os.path.exists(ready_file):
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{open(log_path).read()[-3000:]}")
        if time.time() > deadline:
            stop_server({"process": process})
            pytest.fail(f"server did not start in {timeout:.0f} s:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.2)
    with open(ready_file) as f:
        ports = json.load(f)
    scheme = "https" if "--tls-cert" in command else "http"
    return {"url": f"{scheme}://127.0.0.1:{ports['rest_port']}", "grpc": f"127.0.0.1:{ports['grpc_port']}",
            "process": process, "log": log_path, **ports}


def stop_server(server: dict) -> None:
    process = server["process"]
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def server(model_base, index_dir, tmp_path_factory):
    """A live server (REST + gRPC) over a copy of the model base, shared by the read-only tests.

    Limits: 2 MB bodies, 16 instances, batches of 8, at most 8 queued requests (the
    shedding tests overload it). Its audit log is /dev/full: a disk that is always full.
    Nothing here changes the served versions (the swap test has its own server).
    """
    base = str(tmp_path_factory.mktemp("served") / "kdem")
    shutil.copytree(model_base, base)
    server = start_server(["--model-base", base, "--index", index_dir, "--poll-seconds", "0.5",
                           "--max-body-mb", "2", "--max-instances", "16", "--max-batch", "8", "--max-queue", "8",
                           "--audit-log", "/dev/full"], tmp_path_factory.mktemp("server"))
    try:
        yield dict(server, base=base)
    finally:
        stop_server(server)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 / localhost, made here: (cert PEM path, key PEM path)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


TOKENS = {"search-ui": "tok-3f1c9a7e5b2d4c6f8a0e", "batch-job": "tok-77ab01cd23ef45aa67bb"}


@pytest.fixture(scope="session")
def secure_server(model_base, index_dir, tls_files, tmp_path_factory):
    """A live server with tokens (TOKENS), TLS on both transports (tls_files) and an audit log.

    It also serves an extra model `empty` whose base path has no version yet
    (FAILED_PRECONDITION, and /readyz 503).
    """
    folder = tmp_path_factory.mktemp("secure")
    tokens_file = folder / "tokens.txt"
    tokens_file.write_text("# clients\n" + "".join(f"{n}:{t}\n" for n, t in TOKENS.items()))
    (folder / "empty").mkdir()
    audit_log = folder / "audit.jsonl"
    server = start_server(["--model-base", model_base, "--index", index_dir, "--auth-tokens", tokens_file,
                           "--tls-cert", tls_files[0], "--tls-key", tls_files[1], "--audit-log", audit_log,
                           "--extra-model", f"empty={folder / 'empty'}", "--poll-seconds", "0.5"], folder)
    try:
        yield dict(server, tokens_file=str(tokens_file), audit_log=str(audit_log), ca_cert=tls_files[0])
    finally:
        stop_server(server)


LIMITED_MAX_QUEUE = 4
LIMITED_MAX_QUEUE_IMAGES = 16
EXTRA_MODEL = "copy"  # the embedder's base path served again as an extra model: a generic SavedModel


@pytest.fixture(scope="session")
def limited_server(model_base, index_dir, tmp_path_factory):
    """A live server with tight bounds for tests/serving/test_limits.py and test_malformed.py:
    --max-queue 4 requests, --max-queue-images 16, 16 instances, batches of 8, a 200 ms batch window
    (bursts queue up behind it); default --max-image-pixels; the embedder again as the extra model
    EXTRA_MODEL (run as any SavedModel: one signature call per request). Its log ("log") is read for tracebacks."""
    server = start_server(["--model-base", model_base, "--index", index_dir, "--max-queue", LIMITED_MAX_QUEUE,
                           "--max-queue-images", LIMITED_MAX_QUEUE_IMAGES, "--max-instances", "16",
                           "--max-batch", "8", "--batch-window-ms", "200", "--max-body-mb", "4",
                           "--extra-model", f"{EXTRA_MODEL}={model_base}"],
                          tmp_path_factory.mktemp("limited"))
    try:
        yield server
    finally:
        stop_server(server)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status (VmRSS, in kB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"/proc/{pid}/status has no VmRSS line")


def grpc_codes(futures) -> list:
    """The grpc.StatusCode of each call (futures of `stub.Predict.future`), waiting for all."""
    import grpc
    codes = []
    for future in futures:
        try:
            future.result()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            codes.append(e.code())
    return codes


@pytest.fixture(scope="session")
def ops_server(model_base, index_dir, tmp_path_factory):
    """A live server with tight connection limits over its own copy of the model base (the version
    tests add and delete versions there): headers and body chunks within 1.5 s, 16 REST connections,
    2 concurrent gRPC calls, polled every 0.5 s (issue #24 items 5-7)."""
    base = str(tmp_path_factory.mktemp("ops-served") / "kdem")
    shutil.copytree(model_base, base)
    server = start_server(["--model-base", base, "--index", index_dir, "--poll-seconds", "0.5",
                           "--header-timeout-s", "1.5", "--body-timeout-s", "1.5", "--max-connections", "16",
                           "--max-concurrent-rpcs", "2"], tmp_path_factory.mktemp("ops-server"))
    try:
        yield dict(server, base=base)
    finally:
        stop_server(server)
