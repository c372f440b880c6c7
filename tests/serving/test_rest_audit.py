"""AuditedApp around a real FastAPI app with the server's error handlers: the status actually sent is logged.

A route that crashes (500), an unknown path (404), a refused token (401), a route that
succeeds, and the health check that is not logged; written to a real AuditLog file.
"""
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving.server.audit import AuditLog
from serving.server.errors import unauthenticated
from serving.server.rest_app import add_error_handlers
from serving.server.rest_audit import AuditedApp, audit_entry
from tests.serving.test_audit_lines import strict_json


@pytest.fixture()
def audited(tmp_path):
    app = FastAPI()
    add_error_handlers(app)

    @app.get("/ok")
    async def ok(request: Request):
        audit_entry(request).update(token_name="ui", model="kdem")
        return {"fine": True}

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    @app.get("/refused")
    async def refused():
        raise unauthenticated("invalid token")

    @app.get("/healthz")
    async def healthz():
        return {"live": True}

    audit = AuditLog(str(tmp_path / "audit.jsonl"), fsync="every")
    yield TestClient(AuditedApp(app, audit), raise_server_exceptions=False), audit, tmp_path / "audit.jsonl"
    audit.close()


def test_each_response_is_logged_with_the_status_sent(audited):
    client, audit, path = audited
    sent = [client.get(p).status_code for p in ("/ok", "/boom", "/refused", "/nowhere", "/healthz")]
    assert sent == [200, 500, 401, 404, 200]
    deadline = time.time() + 10
    while audit.written < 4:
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.2)  # a fifth line (the health check) would be there by now
    lines = [strict_json(line) for line in path.read_text().splitlines()]
    assert [(r["path"], r["http_status"], r["status"]) for r in lines] == [
        ("/ok", 200, "OK"), ("/boom", 500, "INTERNAL"), ("/refused", 401, "UNAUTHENTICATED"),
        ("/nowhere", 404, "NOT_FOUND")]
    assert lines[0]["token_name"] == "ui" and lines[0]["model"] == "kdem"
    assert all(r["token_name"] is None for r in lines[1:]) and all(r["transport"] == "rest" for r in lines)
