"""Issue #24, findings 4, 5 and 9 on live servers (127.0.0.1, real token files, real audit logs).

`secure_server` (conftest: TLS, tokens, audit log, default flags) shows the defaults: 401s
audited, bounded strict-JSON lines, X-Forwarded-For ignored, no API docs, no paths in
/healthz. `guarded_server` (here) has roles, `--api-docs`, `--trusted-proxy 127.0.0.1/32`,
`--audit-fsync every` and a queue of one request: docs behind tokens, a trusted proxy's
client address, revocation by emptying / deleting the token file, every response of a
burst with 429s on record with its own status, log rotation and SIGHUP. Every loop is
bounded (counts, and deadlines of seconds).
"""
import concurrent.futures
import os
import signal
import time

import grpc
import pytest
import requests
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from serving.client.rest_client import b64
from tests.serving.conftest import TOKENS, start_server, stop_server
from tests.serving.test_audit_lines import strict_json

GOOD = TOKENS["search-ui"]
ROLE_TOKENS = {"ui": "tok-ui-reader-0123456789", "sync": "tok-sync-writer-01234567", "ops": "tok-ops-both-0123456789a"}
ROLE_LINES = "ui:{ui}:reader\nsync:{sync}:writer\nops:{ops}:reader,writer\n".format(**ROLE_TOKENS)


def audit_lines(path, count=0, timeout=30.0):
    """Every line of the audit log, parsed strictly, once at least `count` are there."""
    deadline = time.time() + timeout
    while True:
        lines = []
        if os.path.exists(path):  # created by the first line
            with open(path) as f:
                lines = f.read().splitlines()
        if len(lines) >= count or time.time() > deadline:
            return [strict_json(line) for line in lines]
        time.sleep(0.1)


def settled_count(path, quiet_s=0.3, timeout=10.0) -> int:
    """The number of lines once the writer thread has caught up (no new line for `quiet_s`)."""
    count, deadline = -1, time.time() + timeout
    while time.time() < deadline:
        now = len(audit_lines(path, timeout=0))
        if now == count:
            return now
        count = now
        time.sleep(quiet_s)
    return count


def secure_get(secure_server, path, token=None, headers=None):
    headers = dict(headers or {}, **({"Authorization": f"Bearer {token}"} if token else {}))
    return requests.get(secure_server["url"] + path, headers=headers, verify=secure_server["ca_cert"], timeout=30)


@pytest.fixture(scope="module")
def guarded_server(model_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("guarded")
    tokens_file, audit_log = folder / "tokens.txt", folder / "audit.jsonl"
    tokens_file.write_text(ROLE_LINES)
    server = start_server(["--model-base", model_base, "--auth-tokens", tokens_file, "--audit-log", audit_log,
                           "--api-docs", "--trusted-proxy", "127.0.0.1/32", "--audit-fsync", "every",
                           "--max-queue", "1", "--max-batch", "1", "--batch-window-ms", "0"], folder)
    try:
        yield dict(server, tokens_file=str(tokens_file), audit_log=str(audit_log))
    finally:
        stop_server(server)


def guarded_get(guarded_server, path, token=None, **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(guarded_server["url"] + path, headers=headers, timeout=30)


# ---------------------------------------------------------------- defaults (secure_server)

def test_twenty_wrong_tokens_give_twenty_audit_lines_with_401(secure_server):
    before = settled_count(secure_server["audit_log"])
    for i in range(20):
        token = None if i % 4 == 0 else f"wrong-token-{i:04d}-abcdefgh"
        assert secure_get(secure_server, "/v1/models/kdem", token).status_code == 401
    with open(secure_server["ca_cert"], "rb") as f:
        channel = grpc.secure_channel(secure_server["grpc"], grpc.ssl_channel_credentials(root_certificates=f.read()))
    with channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "kdem"
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as error:
                model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                    request, metadata=(("authorization", "Bearer wrong-token-grpc-0000"),), timeout=30)
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    lines = audit_lines(secure_server["audit_log"], before + 23)[before:]
    rest = [line for line in lines if line["transport"] == "rest"]
    assert len(rest) == 20 and all((r["http_status"], r["status"]) == (401, "UNAUTHENTICATED") for r in rest)
    assert all(r["token_name"] is None and r["path"] == "/v1/models/kdem" and r["model"] == "kdem" for r in rest)
    over_grpc = [line for line in lines if line["transport"] == "grpc"]
    assert [(g["method"], g["status"]) for g in over_grpc] == [("GetModelStatus", "UNAUTHENTICATED")] * 3
    text = open(secure_server["audit_log"]).read()
    assert "wrong-token" not in text and GOOD not in text


def test_a_5mb_signature_name_gives_an_audit_line_under_16kb(secure_server):
    before = settled_count(secure_server["audit_log"])
    signature = "s" * (5 << 20)
    response = requests.post(secure_server["url"] + "/v1/models/kdem:predict",
                             json={"signature_name": signature, "inputs": {"modality": ["visible"]}},
                             headers={"Authorization": f"Bearer {GOOD}"}, verify=secure_server["ca_cert"], timeout=60)
    assert 400 <= response.status_code < 500
    audit_lines(secure_server["audit_log"], before + 1)  # waits for the writer thread
    with open(secure_server["audit_log"]) as f:
        raw = f.read().splitlines()[before:]
    assert len(raw) == 1 and len(raw[0].encode()) < 16 * 1024
    line = strict_json(raw[0])
    assert line["signature_length"] == 5 << 20 and line["signature"] == signature[:len(line["signature"])]
    assert line["http_status"] == response.status_code and line["token_name"] == "search-ui"


def test_nan_k_and_a_forged_forwarded_for_leave_strict_lines_with_the_socket_address(secure_server, gallery_dir,
                                                                                     gallery_files):
    before = settled_count(secure_server["audit_log"])
    image = b64(open(os.path.join(gallery_dir, gallery_files[0]), "rb").read())["b64"]
    body = '{"image": {"b64": "%s"}, "modality": "visible", "k": NaN}' % image
    response = requests.post(secure_server["url"] + "/v1/models/kdem:search", data=body,
                             headers={"Authorization": f"Bearer {GOOD}", "Content-Type": "application/json",
                                      "X-Forwarded-For": "203.0.113.9"},
                             verify=secure_server["ca_cert"], timeout=60)
    (line,) = audit_lines(secure_server["audit_log"], before + 1)[before:]  # strict: a bare NaN would raise
    assert line["http_status"] == response.status_code
    assert line["client"].startswith("127.0.0.1:") and "proxy" not in line  # X-Forwarded-For not trusted
    assert "203.0.113.9" not in open(secure_server["audit_log"]).read()
    for every in audit_lines(secure_server["audit_log"]):  # the whole file, every test's lines so far
        assert isinstance(every["time"], float) and every["status"]


def test_api_docs_are_off_by_default_and_health_shows_no_paths(secure_server):
    for path in ("/openapi.json", "/docs", "/redoc"):
        for token in (None, GOOD):
            assert secure_get(secure_server, path, token).status_code == 404, (path, token)
    health = secure_get(secure_server, "/healthz")
    assert health.status_code == 200 and health.json()["live"] is True and "ready" in health.json()
    for private in (secure_server["audit_log"], secure_server["tokens_file"], os.path.dirname(secure_server["log"])):
        assert private not in health.text and os.path.basename(private) not in health.text


# ---------------------------------------------------------------- guarded_server

def test_api_docs_with_the_flag_need_a_reader_token(guarded_server):
    before = settled_count(guarded_server["audit_log"])
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert guarded_get(guarded_server, path).status_code == 401
        assert guarded_get(guarded_server, path, ROLE_TOKENS["sync"]).status_code == 403  # writer only
        assert guarded_get(guarded_server, path, ROLE_TOKENS["ui"]).status_code == 200
    schema = guarded_get(guarded_server, "/openapi.json", ROLE_TOKENS["ops"]).json()
    assert "/v1/models/{name}:predict" in schema["paths"] and "/openapi.json" not in schema["paths"]
    lines = audit_lines(guarded_server["audit_log"], before + 10)[before:]
    assert [(line["path"], line["http_status"], line["token_name"]) for line in lines[:3]] == [
        ("/openapi.json", 401, None), ("/openapi.json", 403, "sync"), ("/openapi.json", 200, "ui")]
    assert lines[1]["status"] == "PERMISSION_DENIED"


def test_a_writer_only_token_cannot_read(guarded_server):
    assert guarded_get(guarded_server, "/v1/models/kdem", ROLE_TOKENS["sync"]).status_code == 403
    assert guarded_get(guarded_server, "/v1/models/kdem", ROLE_TOKENS["ops"]).status_code == 200


def test_a_trusted_proxy_names_the_client(guarded_server):
    before = settled_count(guarded_server["audit_log"])
    response = guarded_get(guarded_server, "/v1/models/kdem", ROLE_TOKENS["ui"],
                           **{"X-Forwarded-For": "6.6.6.6, 203.0.113.9"})
    assert response.status_code == 200
    (line,) = audit_lines(guarded_server["audit_log"], before + 1)[before:]
    assert line["client"] == "203.0.113.9" and line["proxy"].startswith("127.0.0.1:")


def _server_log_count(server, text):
    with open(server["log"]) as f:
        return f.read().count(text)


def test_emptying_or_deleting_the_token_file_revokes_at_the_next_request(guarded_server):
    path, token = guarded_server["tokens_file"], ROLE_TOKENS["ui"]
    reports = _server_log_count(guarded_server, "no token is valid")
    try:
        for revoke in (lambda: open(path, "w").close(), lambda: os.unlink(path),
                       lambda: open(path, "w").write(ROLE_LINES.replace(token, "short-token"))):
            assert guarded_get(guarded_server, "/v1/models/kdem", token).status_code == 200
            revoke()
            codes = [guarded_get(guarded_server, "/v1/models/kdem", token).status_code for _ in range(3)]
            assert codes == [401] * 3  # the first request after the change already: the file is checked per call
            with open(path + ".new", "w") as f:
                f.write(ROLE_LINES)
            os.replace(path + ".new", path)
    finally:
        with open(path + ".new", "w") as f:
            f.write(ROLE_LINES)
        os.replace(path + ".new", path)
    assert _server_log_count(guarded_server, "no token is valid") == reports + 3  # once per change, not per call
    with open(guarded_server["log"]) as f:
        log = f.read()
    assert "tokens.txt:1: token of 'ui' is shorter than 16 characters" in log and "short-token" not in log


def test_every_response_of_a_burst_with_429s_is_on_record_with_its_status(guarded_server, gallery_dir, gallery_files):
    body = {"instances": [{"image_bytes": b64(open(os.path.join(gallery_dir, gallery_files[0]), "rb").read()),
                           "modality": "visible"}]}
    before = settled_count(guarded_server["audit_log"])

    def call(n):
        headers = {"Authorization": f"Bearer {ROLE_TOKENS['ui']}", "X-Forwarded-For": f"198.51.100.{n}"}
        return n, requests.post(guarded_server["url"] + "/v1/models/kdem:predict", json=body, headers=headers,
                                timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        sent = dict(pool.map(call, range(12)))
    assert 429 in sent.values() and 200 in sent.values(), sent
    lines = [line for line in audit_lines(guarded_server["audit_log"], before + 12)[before:]
             if line["client"].startswith("198.51.100.")]
    logged = {int(line["client"].rsplit(".", 1)[1]): (line["http_status"], line["status"]) for line in lines}
    assert logged == {n: (code, "OK" if code == 200 else "RESOURCE_EXHAUSTED") for n, code in sent.items()}


def test_a_rotated_audit_log_is_reopened_and_sighup_reopens_it(guarded_server):
    path = guarded_server["audit_log"]
    os.rename(path, path + ".1")
    assert guarded_get(guarded_server, "/v1/models/kdem", ROLE_TOKENS["ui"]).status_code == 200
    deadline = time.time() + 30
    while not audit_lines(path, timeout=0):
        assert time.time() < deadline, "the audit log was not reopened after its rename"
        time.sleep(0.1)
    assert [line["path"] for line in audit_lines(path)] == ["/v1/models/kdem"]
    guarded_server["process"].send_signal(signal.SIGHUP)
    time.sleep(0.5)  # the handler only sets a flag; the next line reopens
    assert guarded_get(guarded_server, "/v1/models/kdem", ROLE_TOKENS["ui"]).status_code == 200
    assert len(audit_lines(path, 2)) == 2
    deadline = time.time() + 10
    while _server_log_count(guarded_server, "reopened (SIGHUP)") < 1:
        assert time.time() < deadline, "no SIGHUP reopen in the server log"
        time.sleep(0.1)
    assert guarded_server["process"].poll() is None  # SIGHUP did not end the server
    health = guarded_get(guarded_server, "/healthz").json()["audit"]
    assert health["reopened"] >= 2 and health["fsync"] == "every" and health["lost"] == 0
