"""Access control and TLS: tokens on both transports, the tokens file re-read, the loopback-only rule.

Fixture `secure_server` (conftest): tokens TOKENS, TLS with a self-signed certificate made
in the test session, an extra model `empty` without any version.
"""
import os
import subprocess
import sys
import time

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc, predict_pb2, \
    prediction_service_pb2_grpc

from serving.server.auth import TokenFileError, TokenStore, is_loopback, parse_tokens, refuse_open_bind
from serving.client.rest_client import ServingClient
from serving.client.grpc_client import GrpcClient, GrpcClientError
from tests.serving.conftest import REPO, TOKENS

GOOD = TOKENS["search-ui"]


def _rest(secure_server, path, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(secure_server["url"] + path, headers=headers, verify=secure_server["ca_cert"], timeout=30)


def _channel(secure_server):
    with open(secure_server["ca_cert"], "rb") as f:
        return grpc.secure_channel(secure_server["grpc"], grpc.ssl_channel_credentials(root_certificates=f.read()))


def _status_request(name="kdem"):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return request


def test_rest_needs_a_valid_bearer_token_and_health_stays_open(secure_server):
    assert secure_server["url"].startswith("https://")
    for token in (None, "wrong", GOOD + "x", GOOD[:-1]):
        response = _rest(secure_server, "/v1/models/kdem", token)
        assert response.status_code == 401, token
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert GOOD not in response.text
    malformed = requests.get(secure_server["url"] + "/v1/models/kdem", headers={"Authorization": GOOD},
                             verify=secure_server["ca_cert"], timeout=30)
    assert malformed.status_code == 401  # no "Bearer" scheme
    assert _rest(secure_server, "/v1/models/kdem", GOOD).json()["model_version_status"][0]["version"] == "1"
    assert _rest(secure_server, "/v1/models/kdem", TOKENS["batch-job"]).status_code == 200
    assert _rest(secure_server, "/healthz").status_code == 200  # liveness without a token


def test_rest_refuses_plain_http_and_unknown_certificates(secure_server):
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(secure_server["url"] + "/healthz", timeout=30)  # not trusted without --ca-cert
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(secure_server["url"].replace("https://", "http://") + "/healthz", timeout=30)


def test_grpc_needs_the_authorization_metadata_over_tls(secure_server):
    with _channel(secure_server) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", GOOD),)):
            with pytest.raises(grpc.RpcError) as error:
                models.GetModelStatus(_status_request(), metadata=metadata, timeout=30)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert GOOD not in error.value.details()
        response = models.GetModelStatus(_status_request(), metadata=(("authorization", f"Bearer {GOOD}"),),
                                         timeout=30)
        assert response.model_version_status[0].version == 1
    with grpc.insecure_channel(secure_server["grpc"]) as plain:  # plaintext to a TLS port
        with pytest.raises(grpc.RpcError) as error:
            model_service_pb2_grpc.ModelServiceStub(plain).GetModelStatus(
                _status_request(), metadata=(("authorization", f"Bearer {GOOD}"),), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_no_version_loaded_is_failed_precondition_and_not_ready(secure_server, gallery_dir, gallery_files):
    token = (("authorization", f"Bearer {GOOD}"),)
    with _channel(secure_server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "empty"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request, metadata=token, timeout=30)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _rest(secure_server, "/v1/models/empty", GOOD).status_code == 400
    readiness = _rest(secure_server, "/readyz")
    assert readiness.status_code == 503 and readiness.json()["models"] == {"kdem": 1, "empty": None}
    health = _rest(secure_server, "/healthz")
    assert health.status_code == 200 and health.json()["live"] is True and health.json()["ready"] is False


def test_the_client_speaks_both_transports_with_token_and_ca(secure_server, gallery_dir, gallery_files, tmp_path):
    image = open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()
    rest = ServingClient(secure_server["url"], token=GOOD, ca_cert=secure_server["ca_cert"])
    over_grpc = GrpcClient(secure_server["grpc"], token=GOOD, ca_cert=secure_server["ca_cert"])
    assert over_grpc.status() == rest.status()
    rest_rows = rest.search([image], ["visible"], k=3)[0]
    grpc_rows = over_grpc.search([image], ["visible"], k=3)[0]
    assert [r["index"] for r in grpc_rows] == [r["index"] for r in rest_rows] and len(grpc_rows) == 3
    for grpc_row, rest_row in zip(grpc_rows, rest_rows):
        assert grpc_row["score"] == pytest.approx(rest_row["score"], abs=1e-5)
        assert {k: grpc_row[k] for k in ("rank", "person_id", "camera", "path")} == \
            {k: rest_row[k] for k in ("rank", "person_id", "camera", "path")}
    with pytest.raises(GrpcClientError) as error:
        GrpcClient(secure_server["grpc"], ca_cert=secure_server["ca_cert"]).status()
    assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
    # The command line: --grpc, --token-file, --ca-cert.
    token_file = tmp_path / "token"
    token_file.write_text(GOOD + "\n")
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "serving.client", "status", "--grpc", secure_server["grpc"],
                          "--token-file", str(token_file), "--ca-cert", secure_server["ca_cert"]],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert '"version": "1"' in out.stdout and '"AVAILABLE"' in out.stdout


def test_tokens_file_is_reread_on_change(secure_server):
    path = secure_server["tokens_file"]
    original = open(path).read()
    try:
        with open(path + ".new", "w") as f:
            f.write(original + "rotated:tok-new-0123456789abcdef\n")
        os.replace(path + ".new", path)
        deadline = time.time() + 30
        while _rest(secure_server, "/v1/models/kdem", "tok-new-0123456789abcdef").status_code != 200:
            assert time.time() < deadline, "the new token was not taken up"
            time.sleep(0.2)
        with open(path + ".new", "w") as f:
            f.write("search-ui:tok-only-this-one\n")
        os.replace(path + ".new", path)
        deadline = time.time() + 30
        while _rest(secure_server, "/v1/models/kdem", GOOD).status_code != 401:
            assert time.time() < deadline, "a removed token still works"
            time.sleep(0.2)
    finally:
        with open(path + ".new", "w") as f:
            f.write(original)
        os.replace(path + ".new", path)
        deadline = time.time() + 30
        while _rest(secure_server, "/v1/models/kdem", GOOD).status_code != 200:
            assert time.time() < deadline
            time.sleep(0.2)
    log = open(secure_server["log"]).read()
    for token in list(TOKENS.values()) + ["tok-new-0123456789abcdef", "tok-only-this-one"]:
        assert token not in log  # tokens never reach the log


def test_tokens_file_errors_name_file_and_line_not_the_token(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("a:tok-secret-0000000001\n\nno-colon-tok-secret-2\n")
    with pytest.raises(TokenFileError) as error:
        parse_tokens(str(path))
    assert str(error.value) == f"{path}:3: expected 'name:token' or 'name:token:role[,role]' (no ':' inside a token)"
    path.write_text("a:tok-secret-0000000001\na:tok-secret-0000000003\n")
    with pytest.raises(TokenFileError, match=r":2: name 'a' given twice") as error:
        parse_tokens(str(path))
    assert "secret" not in str(error.value)
    path.write_text("a:tok-1-0123456789ab\n")
    store = TokenStore(str(path))
    assert store.name_of(b"tok-1-0123456789ab") == "a" and store.name_of(b"tok-2-0123456789ab") is None
    path.write_text("a:tok-1-0123456789ab\nbroken line\n")  # a bad edit: no token is valid (fails closed)
    assert store.name_of(b"tok-1-0123456789ab") is None


def test_open_addresses_need_tokens():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    assert refuse_open_bind("127.0.0.1", False, False) is None
    assert refuse_open_bind("0.0.0.0", True, False) is None
    assert refuse_open_bind("0.0.0.0", False, True) is None
    assert "refusing" in refuse_open_bind("0.0.0.0", False, False)


def test_the_server_refuses_a_public_address_without_tokens(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "serving.server", "--model-base", str(tmp_path), "--host", "0.0.0.0",
                          "--port", "0", "--grpc-port", "0"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to serve on 0.0.0.0 without --auth-tokens" in lines[0], out.stderr


def test_roles_short_tokens_and_unknown_roles(tmp_path):
    from serving.server.auth import MIN_TOKEN_CHARS, READER, WRITER
    path = tmp_path / "tokens.txt"
    path.write_text("old:tok-old-0123456789ab\nui:tok-ui-0123456789abc:reader\n"
                    "sync:tok-sync-0123456789a:writer\nops:tok-ops-0123456789ab: reader , writer\n")
    roles = {name: client.roles for name, client in parse_tokens(str(path)).items()}
    assert roles == {"old": {READER}, "ui": {READER}, "sync": {WRITER}, "ops": {READER, WRITER}}
    store = TokenStore(str(path))
    assert store.check("Bearer tok-ops-0123456789ab", WRITER) == "ops"
    assert store.check("Bearer tok-old-0123456789ab") == "old"
    for token, role in (("tok-sync-0123456789a", READER), ("tok-old-0123456789ab", WRITER)):
        with pytest.raises(Exception) as error:
            store.check(f"Bearer {token}", role)
        assert (error.value.code, error.value.status) == ("PERMISSION_DENIED", 403) and token not in str(error.value)
    path.write_text("a:tok-long-enough-0001\nb:short-secret\n")
    with pytest.raises(TokenFileError) as error:
        parse_tokens(str(path))
    assert str(error.value) == f"{path}:2: token of 'b' is shorter than {MIN_TOKEN_CHARS} characters"
    path.write_text("a:tok-long-enough-0001:admin\n")
    with pytest.raises(TokenFileError, match=r"tokens.txt:1: unknown role 'admin' \(roles: reader, writer\)"):
        parse_tokens(str(path))


def test_a_missing_empty_or_broken_file_leaves_no_token_valid_and_says_so_once(tmp_path, caplog):
    path = tmp_path / "tokens.txt"
    path.write_text("a:tok-a-0123456789abcd\n")
    store = TokenStore(str(path))
    cases = [("emptied", lambda: path.write_text("")), ("restored", lambda: path.write_text("a:tok-a-0123456789abcd\n")),
             ("deleted", path.unlink), ("short", lambda: path.write_text("a:tok-a-short\n"))]
    for what, change in cases:
        change()
        caplog.clear()
        valid = [store.name_of(b"tok-a-0123456789abcd") for _ in range(5)]  # five calls, one report
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        if what == "restored":
            assert valid == ["a"] * 5 and errors == []
        else:
            assert valid == [None] * 5, what
            assert len(errors) == 1 and "no token is valid" in errors[0] and str(path) in errors[0], (what, errors)
            assert "tok-a" not in errors[0]
    with pytest.raises(TokenFileError):  # at start-up a file that cannot be used stops the server
        TokenStore(str(tmp_path / "missing.txt"))
    assert TokenStore(str(tmp_path / "missing.txt"), must_load=False).name_of(b"tok-a-0123456789abcd") is None
