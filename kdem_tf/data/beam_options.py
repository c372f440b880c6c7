"""Beam pipeline options from the command line, and the runners this project refuses.

Every entry point that starts a Beam job (`python -m kdem_tf.data.preprocess`, the TFX pipeline's
runners) takes Beam options two ways and passes them on unchanged:

    --beam-arg=--runner=DataflowRunner --beam-arg=--project=P    (repeatable; note the `=`:
                                                                  argparse reads a bare `--runner=…`
                                                                  after `--beam-arg` as a flag)
    ... -- --runner=FlinkRunner --flink_master=HOST:8081         (everything after a lone `--`)

Refused runner: Beam's DaskRunner (2.74) drops whatever a DoFn emits in `finish_bundle`, and
Beam's file sinks (WriteToText, the TFRecord sink) emit their results there: its jobs report
success and write empty files (1,000 lines written → 0; with `num_shards=3` the rename fails
with "src and dst files do not exist"). It is refused before anything runs.

Imports neither TensorFlow nor (until a runner is checked) Beam: a CLI can parse its flags first.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

BEAM_ARG_HELP = ("a Beam pipeline option, passed through unchanged (repeatable; write --beam-arg=--flag=value); "
                 "options after a lone -- are Beam options too")

# Lower-case runner class name → why it is refused.
REFUSED_RUNNERS = {
    "daskrunner": "Beam's DaskRunner drops what a DoFn emits in finish_bundle, where Beam's file sinks "
                  "emit their results: its jobs write empty files and report success",
}


class UnsupportedRunnerError(ValueError):
    """A Beam runner that would lose the job's output silently."""


def split_at_separator(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(the program's own arguments, the Beam options after the first lone `--`)."""
    argv = list(argv)
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def check_beam_args(beam_args: Sequence[str]) -> None:
    """check_runner on the runner that `beam_args` select."""
    check_runner(runner_name(beam_args))


def runner_name(beam_args: Sequence[str]) -> str:
    """The runner that `beam_args` select, as Beam resolves it (`--runner X` or `--runner=X`;
    "" when none is named)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    return PipelineOptions(list(beam_args)).view_as(StandardOptions).runner or ""


def check_runner(name: str) -> None:
    """Raises UnsupportedRunnerError naming the runner and the reason when it is refused.

    `name` as `--runner` takes it: a short name (`dask`, `DaskRunner`) or a dotted class path.
    """
    short = name.rsplit(".", 1)[-1].lower()
    for key in (short, short + "runner"):
        if key in REFUSED_RUNNERS:
            raise UnsupportedRunnerError(f"Beam runner {name!r} is not supported: {REFUSED_RUNNERS[key]}. "
                                         f"Use the DirectRunner on one machine, or Dataflow, Flink or Spark "
                                         f"(docs/pipeline.md)")
