"""README.md's "Train on your own cameras" commands, extracted from the README and run as written there
(issue #27), so that the README and the commands cannot drift apart.

The commands are the first code block of that section that runs `python -m`. The only changes, all
mechanical:
- `python` is this interpreter; the commands run in a fresh folder (their relative paths land there);
- the README's absolute paths `/data/own/manifest.csv` and `/data/own-tfrecords` point into that folder,
  and `probe.jpg` is an infrared query image of the tiny manifest copied there;
- the training command gets TINY_TRAINING appended (argparse keeps the last `--preset`): the tiny
  preset, two steps, no non-local blocks (tests/pipeline/conftest.py's reasons);
- the ports 8501 and 8500 become free ones; the server command (the one that serves until stopped)
  runs in the background until the commands after it have run.
The manifest: the session's tiny synthetic SYSU-MM01 images (tests/conftest.py), four identities to
train, two to test (infrared queries, visible gallery), in the README's `path,person_id,camera,
modality,split` format.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from typing import List

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Train on your own cameras"
TINY_TRAINING = ["--preset", "tiny", "--max-steps", "2", "--set", "model.non_local=false"]
VISIBLE_CAMERAS, INFRARED_CAMERAS = (1, 2, 4, 5), (3, 6)  # SYSU-MM01's


def readme_commands() -> List[List[str]]:
    """The section's commands, continuation lines joined, each split as a shell would."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```\n(.*?)```", section, re.S) if "python -m " in b]
    assert blocks, f"README.md: no commands under {SECTION!r}"
    joined = blocks[0].replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line.strip()]


def test_the_walkthrough_is_the_documented_sequence():
    modules = [c[2] for c in readme_commands()]
    assert modules == ["kdem_tf.data.preprocess", "kdem_tf.train", "serving.export", "kdem_tf.evaluate",
                       "serving.index", "serving.server", "serving.client"]
    assert all(c[:2] == ["python", "-m"] for c in readme_commands())


def write_manifest(sysu_root: str, folder: str) -> str:
    """The tiny manifest (see the module docstring); returns an infrared query image's path."""
    ids = sorted(os.listdir(os.path.join(sysu_root, "cam1")))
    train, test = ids[:4], ids[4:6]
    lines, probe = ["path,person_id,camera,modality,split"], None
    for cam in VISIBLE_CAMERAS + INFRARED_CAMERAS:
        modality = "visible" if cam in VISIBLE_CAMERAS else "infrared"
        for pid in train + test:
            person = os.path.join(sysu_root, f"cam{cam}", pid)
            for name in sorted(os.listdir(person)) if os.path.isdir(person) else []:
                rel = f"cam{cam}/{pid}/{name}"
                os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
                shutil.copy(os.path.join(person, name), os.path.join(folder, rel))
                split = "train" if pid in train else ("query" if modality == "infrared" else "gallery")
                lines.append(f"{rel},{int(pid)},{cam},{modality},{split}")
                if split == "query" and probe is None:
                    probe = os.path.join(folder, rel)
    with open(os.path.join(folder, "manifest.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return probe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substituted(command: List[str], work: str, ports: dict) -> List[str]:
    replace = {"/data/own/manifest.csv": os.path.join(work, "own", "manifest.csv"),
               "/data/own-tfrecords": os.path.join(work, "own-tfrecords")}
    out = [sys.executable] + command[1:]
    for i, arg in enumerate(out):
        for old, new in list(replace.items()) + [(str(k), str(v)) for k, v in ports.items()]:
            arg = arg.replace(old, new)
        out[i] = arg
    if command[2] == "kdem_tf.train":
        out += TINY_TRAINING
    return out


def start_server(command: List[str], work: str, env: dict) -> subprocess.Popen:
    log = open(os.path.join(work, "server.log"), "w")
    process = subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        with open(log.name) as f:
            if "serving: rest=" in f.read():
                return process
        if process.poll() is not None:
            with open(log.name) as f:
                pytest.fail(f"{shlex.join(command)} exited with {process.returncode}:\n{f.read()[-3000:]}")
        time.sleep(0.5)
    process.kill()
    pytest.fail("the server did not start serving in 180 s")


def test_readme_walkthrough_runs_as_written(tiny_sysu, tmp_path):
    work = str(tmp_path)
    probe = write_manifest(tiny_sysu, os.path.join(work, "own"))
    shutil.copy(probe, os.path.join(work, "probe.jpg"))
    ports = {8501: free_port(), 8500: free_port()}
    env = dict(os.environ, PYTHONPATH=REPO)
    server = None
    outputs = {}
    try:
        for command in readme_commands():
            argv = substituted(command, work, ports)
            if command[2] == "serving.server":
                server = start_server(argv, work, env)
                continue
            result = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, f"{shlex.join(argv)}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            outputs[command[2]] = result.stdout
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    assert os.path.exists(os.path.join(work, "own-tfrecords", "_SUCCESS"))
    with open(os.path.join(work, "reports", "own", "metrics.json")) as f:
        assert "mAP" in json.dumps(json.load(f))
    with open(os.path.join(work, "own", "manifest.csv")) as f:
        gallery = {line.split(",")[0] for line in f if line.strip().endswith(",gallery")}
    ranked = re.findall(r"^\s+\d+\. id .* (\S+)$", outputs["serving.client"], re.M)
    assert len(ranked) == min(10, len(gallery)), outputs["serving.client"]  # --k 10 over the gallery
    assert set(ranked) <= gallery
