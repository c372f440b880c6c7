"""The pipeline runners' console (issue #27): a tiny run of `python -m pipeline.local_runner` and the TFX
CLI's `pipeline create` + `run create` print their own progress and the results table, last; library
output (absl records and their protobuf continuation lines, TensorFlow's C++ lines, Google's
FutureWarnings, Beam) goes to HOME/console.log.

One real pipeline home: the runner's first run (every component executes), then the TFX CLI on the same
home and settings (every component cached), through `python -m pipeline.tfx_cli` and through the plain
`tfx` command, whose own start-up lines (it imports TensorFlow before any code of ours runs) are the
only library lines allowed there.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import List

import pytest

from kdem_tf import console
from tests.pipeline.conftest import OVERRIDES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "kdem-console"
MAX_LINES = 120
# A protobuf text-format line: `executor_specs {`, `key: "Trainer"`, `  value: 3`, `}`.
PROTOBUF = re.compile(r'^\s*(\w+ \{|\}|\w+: ".*"|\s+\w+: \S+)\s*$')
REPORT_ROW = re.compile(r"^(component\s+state|[\w-]+\s+(COMPLETE|CACHED|FAILED|RUNNING|NEW)\b|metrics: |serving: |"
                        r"metadata: )")


def env_for(home: str, data_root: str) -> dict:
    """The tiny settings of tests/pipeline/conftest.py as the KDEM_* variables the TFX CLI reads."""
    env = {k: v for k, v in os.environ.items() if k != console.ENV_VERBOSE}
    env.update(PYTHONPATH=REPO, LOCAL_HOME=os.path.join(home, "tfx-cli"), KDEM_PIPELINE_NAME=NAME,
               KDEM_PIPELINE_HOME=home, KDEM_DATA_ROOT=data_root, KDEM_PRESET="tiny", KDEM_TRAIN_STEPS="2",
               KDEM_EVAL_TRIALS="2", KDEM_MIN_MAP="0.0", KDEM_BEAM_MODE="in_memory",
               KDEM_TRAIN_OVERRIDES=";".join(OVERRIDES), KDEM_CODE_FINGERPRINT="tests")
    return env


def console_of(argv: List[str], env: dict) -> List[str]:
    """The command's console (stdout and stderr as one stream, in order), its exit checked."""
    result = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]
    return result.stdout.rstrip("\n").split("\n")  # lines as `wc -l` counts them (a progress bar's \r: one)


def assert_results_last(lines: List[str]) -> None:
    starts = [i for i, line in enumerate(lines) if line.startswith(f"pipeline {NAME}: root ")]
    assert len(starts) == 1, "\n".join(lines[-40:])
    table = lines[starts[0] + 1:]
    assert table and all(REPORT_ROW.match(line) for line in table), "\n".join(table)
    assert table[-1].startswith("metadata: ")


def assert_no_library_lines(lines: List[str]) -> None:
    noise = [line for line in lines if console.is_noise(line.lstrip("\r"))]
    protobuf = [line for line in lines if PROTOBUF.match(line)]
    assert noise == [] and protobuf == [], "\n".join((noise + protobuf)[:20])


@pytest.fixture(scope="module")
def consoles(tmp_path_factory, tiny_data):
    home = str(tmp_path_factory.mktemp("console-home"))
    env = env_for(home, tiny_data)
    out = {"runner": console_of([sys.executable, "-m", "pipeline.local_runner"], env)}
    out["create"] = console_of([sys.executable, "-m", "pipeline.tfx_cli", "pipeline", "create", "--engine", "local",
                                "--pipeline_path", "pipeline/local_runner.py"], env)
    run = ["run", "create", "--engine", "local", "--pipeline_name", NAME]
    out["run"] = console_of([sys.executable, "-m", "pipeline.tfx_cli", *run], env)
    out["tfx"] = console_of([os.path.join(os.path.dirname(sys.executable), "tfx"), *run], env)
    out["home"] = home
    return out


def test_runner_prints_progress_and_results_only(consoles):
    lines = consoles["runner"]
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines"
    assert_no_library_lines(lines)
    assert_results_last(lines)
    assert any(line.startswith("epoch 1/") for line in lines)  # the Trainer's progress is ours: shown
    assert all("COMPLETE" in line for line in lines if re.match(r"^(Trainer|ReidEvaluator|Pusher)\s", line))


def test_library_output_is_in_the_run_log(consoles):
    with open(os.path.join(consoles["home"], "console.log"), errors="replace") as f:
        log = f.read()
    assert "INFO:absl:" in log and "executor_specs {" in log  # what the console did not show is kept


def test_tfx_cli_module_prints_the_cli_and_the_results_only(consoles):
    assert consoles["create"][-1] == f'Pipeline "{NAME}" created successfully.'
    assert len(consoles["create"]) <= 5, consoles["create"]
    lines = consoles["run"]
    assert len(lines) <= MAX_LINES
    assert_no_library_lines(consoles["create"] + lines)
    assert_results_last(lines)
    assert all("CACHED" in line for line in lines if re.match(r"^(Trainer|ReidEvaluator)\s", line))


def test_plain_tfx_run_create_has_only_the_tfx_processes_own_start_up_lines(consoles):
    lines = consoles["tfx"]
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines"
    assert_results_last(lines)
    protobuf = [line for line in lines if PROTOBUF.match(line)]
    assert protobuf == []
    at = lines.index(f"Creating a run for pipeline: {NAME}")
    assert not any(console.is_noise(line) for line in lines[at:])  # after the tfx process's own start-up
