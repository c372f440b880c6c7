"""Versions on a live server (issue #24 item 6 / finding 10): a failed version is retried once its
folder changes, deleting the newest version rolls back; an index that does not fit is refused.

The live part runs on `ops_server` (its own copy of the model base, polled every 0.5 s).
"""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import requests

from tests.serving.conftest import REPO


def _served(server) -> str:
    return requests.get(server["url"] + "/v1/models/kdem", timeout=30).json()["model_version_status"][0]["version"]


def _wait_for(condition, what: str, server, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"{what}:\n{open(server['log']).read()[-3000:]}"
        time.sleep(0.3)


def _publish_copy(base: str, version: int, without=()) -> str:
    """Copies version 1 to `version` (into a hidden sibling, renamed in), leaving out `without`."""
    temporary = os.path.join(base, f".{version}.tmp-test")
    shutil.copytree(os.path.join(base, "1"), temporary, ignore=shutil.ignore_patterns(*without))
    target = os.path.join(base, str(version))
    os.rename(temporary, target)
    return target


def test_rollback_and_a_failed_version_retried_once_complete(ops_server):
    base = ops_server["base"]
    assert _served(ops_server) == "1"
    _publish_copy(base, 2)
    _wait_for(lambda: _served(ops_server) == "2", "version 2 not served", ops_server)

    shutil.rmtree(os.path.join(base, "2"))  # a rollback: the newest version deleted
    _wait_for(lambda: _served(ops_server) == "1", "no rollback to version 1", ops_server)
    assert "version 2 was removed: rolled back" in open(ops_server["log"]).read()

    half = _publish_copy(base, 3, without=("variables",))  # a copy caught half-way by the poll
    _wait_for(lambda: "cannot load version 3" in open(ops_server["log"]).read(), "version 3 not tried", ops_server)
    time.sleep(2.0)  # four polls: an unchanged failed folder is not loaded again
    assert open(ops_server["log"]).read().count("cannot load version 3") == 1
    assert _served(ops_server) == "1"
    shutil.copytree(os.path.join(base, "1", "variables"), os.path.join(half, "variables"))  # the copy completes
    _wait_for(lambda: _served(ops_server) == "3", "version 3 not retried once complete", ops_server)

    shutil.rmtree(half)
    _wait_for(lambda: _served(ops_server) == "1", "no rollback from version 3", ops_server)


@pytest.fixture(scope="module")
def served_model(model_base):
    from serving.server.versions import ServedModel
    served = ServedModel("kdem", model_base)
    assert served.refresh() and served.current.version == 1
    return served


def _manifest(index_dir: str, **changes) -> dict:
    with open(os.path.join(index_dir, "manifest.json")) as f:
        return dict(json.load(f), **changes)


def test_a_fitting_index_is_searched_with_its_version(served_model, index_dir):
    from serving.server.versions import index_version
    assert index_version(index_dir, _manifest(index_dir), served_model).version == 1


@pytest.mark.parametrize("change, named", [
    ({"embedding_dim": 3}, "holds 3-d embeddings"),
    ({"model_version": 7}, "built with model version 7, which is not under"),
])
def test_an_index_that_does_not_fit_is_refused_naming_both(served_model, index_dir, change, named):
    from serving.server.versions import IndexMismatch, index_version
    with pytest.raises(IndexMismatch) as refusal:
        index_version(index_dir, _manifest(index_dir, **change), served_model)
    message = str(refusal.value)
    assert named in message and index_dir in message and served_model.base_path in message, message


def test_an_index_with_another_image_contract_is_refused(served_model, index_dir):
    from serving.server.versions import IndexMismatch, index_version
    manifest = _manifest(index_dir)
    contract = dict(manifest["image_contract"], image_size=[128, 64])
    with pytest.raises(IndexMismatch, match="image contract .*128, 64.* but model .* uses .*64, 32"):
        index_version(index_dir, dict(manifest, image_contract=contract), served_model)


def test_the_server_refuses_to_start_with_a_misfit_index(model_base, index_dir, tmp_path):
    index = tmp_path / "index"
    shutil.copytree(index_dir, index)
    (index / "manifest.json").write_text(json.dumps(_manifest(index_dir, embedding_dim=3)))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "serving.server", "--model-base", model_base, "--index", str(index),
                           "--port", "0", "--grpc-port", "0"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("serving.server: index ") and "3-d" in last and model_base in last, last
    assert "Traceback" not in done.stderr
