"""The command lines as a newcomer meets them (issue #27): `--help` answers in a fresh process without
importing TensorFlow, Beam, Keras or TFX, names `python -m ...`, describes every flag and shows its
default; an unknown flag, a Beam option passed as a flag and an abbreviated flag are errors naming
the flag."""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys
from typing import Dict, List

import pytest

from kdem_tf import cli_help

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("tensorflow", "keras", "apache_beam", "tfx")

# Each entry point and the least a run needs besides flags under test (so that a flag error is the
# only error): the required flags with placeholder values.
ENTRY_POINTS: Dict[str, List[str]] = {
    "kdem_tf.train": ["--dataset", "sysu", "--data", "nowhere", "--out", "nowhere"],
    "kdem_tf.data.preprocess": ["--dataset", "sysu", "--data-root", "nowhere", "--output", "nowhere"],
    "kdem_tf.evaluate": ["--dataset", "sysu", "--data-root", "nowhere", "--features", "nowhere.npz"],
    "kdem_tf.data.synthetic": ["--layout", "sysu", "--out", "nowhere"],
    "pipeline.local_runner": [],
    "pipeline.kubeflow_v2_runner": ["--output", "nowhere.json"],
    "pipeline.demo": [],
    "kdem_tf.visualize": ["--model", "nowhere", "--data-root", "nowhere", "--out", "nowhere"],
    "kdem_tf.import_checkpoint": ["--from", "agw", "nowhere.t", "--out", "nowhere"],
    "serving.export": ["--run", "nowhere", "--out", "nowhere"],
    "serving.index": ["--model", "nowhere", "--gallery", "nowhere", "--out", "nowhere"],
    "serving.client": ["status", "--url", "http://127.0.0.1:9"],
    "serving.server": ["--model-base", "nowhere"],
}


def run_module(module: str, *args: str, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=120)


def imported_packages(importtime_stderr: str) -> set:
    """Top-level packages named by `-X importtime` lines (`import time: self | cumulative | name`)."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


def parser_of(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser `main` builds (its parse_args is stopped before anything runs)."""
    def capture(self, args=None, namespace=None):
        raise _Captured(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured) as captured:
        found = importlib.import_module(module)  # a package's command line is its cli module (its __main__ runs it)
        (getattr(found, "main", None) or importlib.import_module(f"{module}.cli").main)([])
    return captured.value.parser


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_answers_without_tensorflow(module):
    result = run_module(module, "--help", importtime=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: python -m {module} ")
    heavy = imported_packages(result.stderr) & set(HEAVY)
    assert heavy == set(), f"{module} --help imported {sorted(heavy)}"
    assert "import time:" in result.stderr  # the import list was read (the check above can fail)


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_help_describes_every_flag_and_default(module, monkeypatch):
    parser = parser_of(module, monkeypatch)
    assert parser.prog == f"python -m {module}"
    assert parser.allow_abbrev is False
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    text = parser.format_help()
    for action in parser._actions:
        flag = (action.option_strings or [action.dest])[-1]
        assert action.help, f"{module} {flag} has no help text"
        if action.option_strings and (action.required or action.help.startswith(cli_help.REQUIRED)):
            assert action.help.startswith(cli_help.REQUIRED), f"{module} {flag} is required but not marked"
        elif action.default not in (None, False, [], argparse.SUPPRESS):
            shown = parser.formatter_class(parser.prog)._get_help_string(action)
            assert "default" in shown.lower(), f"{module} {flag}: default {action.default!r} not shown"
    assert "(default: None)" not in text


def test_train_marks_its_required_flags_in_the_usage():
    result = run_module("kdem_tf.train", "--help")
    usage = result.stdout.split("\n\n")[0]
    assert "--dataset NAME --data DIR --out DIR" in usage and "--print-config" in usage
    for flag in ("--dataset", "--data", "--out"):
        assert f"{cli_help.REQUIRED}" in result.stdout.split(f"  {flag} ", 1)[1].split("\n  --", 1)[0]
    missing = run_module("kdem_tf.train", "--data", "x")
    assert missing.returncode == 2 and "required: --dataset, --out" in missing.stderr


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_unknown_flag_is_an_error_naming_it(module):
    result = run_module(module, *ENTRY_POINTS[module], "--frobnicate", "1")
    assert result.returncode == 2
    assert "unrecognized arguments: --frobnicate 1" in result.stderr


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS))
def test_abbreviated_flag_is_an_error(module, monkeypatch):
    parser = parser_of(module, monkeypatch)
    monkeypatch.undo()
    args = ENTRY_POINTS[module]
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if subcommands:  # the flags are the command's (ENTRY_POINTS names it first)
        parser, args = subcommands[0].choices[args[0]], args[1:]
    long_flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--") and len(s) > 6
                  and a.nargs != 0 and not any(o != s and o.startswith(s[:-1]) for o in parser._option_string_actions)]
    assert long_flags, module
    abbreviated = long_flags[0][:-1]
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([*args, abbreviated, "1"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("args, named", [
    (["--num-shard", "3"], "--num-shard 3"),                # a prefix of --num-shards
    (["--image-size", "banana"], "--image-size banana"),    # the README's old step 2: no such flag
    (["--runner=DirectRunner"], "--runner=DirectRunner"),   # a Beam option: --beam-arg or after --
])
def test_preprocess_refuses_what_it_does_not_read(args, named):
    result = run_module("kdem_tf.data.preprocess", *ENTRY_POINTS["kdem_tf.data.preprocess"], *args)
    assert result.returncode == 2
    assert f"unrecognized arguments: {named}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_refused_beam_runner_is_an_error_before_anything_runs():
    result = run_module("kdem_tf.data.preprocess", *ENTRY_POINTS["kdem_tf.data.preprocess"], "--",
                        "--runner=DaskRunner")
    assert result.returncode == 2
    assert "'DaskRunner' is not supported" in result.stderr


@pytest.mark.parametrize("module", ["kdem_tf.data.preprocess", "pipeline.local_runner"])
def test_a_refused_beam_runner_is_a_flag_error(module):
    result = run_module(module, *ENTRY_POINTS[module], "--beam-arg=--runner=DaskRunner")
    assert result.returncode == 2
    assert "error: Beam runner 'DaskRunner' is not supported" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_tfx_cli_module_is_the_tfx_command():
    """`python -m pipeline.tfx_cli` answers as `tfx` does (click's own flag errors), nothing added."""
    result = run_module("pipeline.tfx_cli", "run", "create", "--engine", "local", "--frobnicate")
    assert result.returncode == 2
    assert "No such option '--frobnicate'" in result.stderr
    assert run_module("pipeline.tfx_cli", "--help").stdout.startswith("Usage: tfx ")


def test_every_client_command_is_described_with_its_flags_and_defaults(monkeypatch):
    """`python -m serving.client COMMAND --help`: a description, every flag described, defaults shown, the
    images' modality required (no silent default)."""
    parser = parser_of("serving.client", monkeypatch)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert sorted(commands) == ["embed", "metadata", "predict", "search", "status"]
    for name, sub in commands.items():
        assert sub.description and sub.prog == f"python -m serving.client {name}" and sub.allow_abbrev is False
        for action in sub._actions:
            flag = action.option_strings[-1]
            assert action.help, f"{name} {flag} has no help text"
            if action.default not in (None, False, [], argparse.SUPPRESS) and not action.help.startswith(cli_help.REQUIRED):
                assert "default" in sub.formatter_class(sub.prog)._get_help_string(action).lower(), (name, flag)
        modality = [a for a in sub._actions if "--modality" in a.option_strings]
        if name in ("predict", "search", "embed"):
            assert modality and modality[0].required, name
    result = run_module("serving.client", "search", "--image", "q.jpg")
    assert result.returncode == 2 and "--modality" in result.stderr
