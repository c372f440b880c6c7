"""`python -m pipeline.tfx_cli ...`: the TFX command line (`tfx pipeline create`, `tfx run create`, ...)
with this project's clean console.

    python -m pipeline.tfx_cli pipeline create --engine local --pipeline_path pipeline/local_runner.py
    python -m pipeline.tfx_cli run create --engine local --pipeline_name kdem-reid

The `tfx` command imports TensorFlow before it reads its arguments, so TensorFlow's C++ start-up lines
and the Google client libraries' FutureWarnings reach the console before any code of this project runs
(17 lines on the 2-core CPU, each time). Started as a module of this package, the same command runs
behind `kdem_tf.console` (pipeline/__init__.py starts it first): those lines go to the log file, and
what `tfx run create` prints of its own (`Creating a run ...`) and the pipeline's results table stay.
Arguments and behaviour are the `tfx` command's own: this module adds nothing else.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from tfx.tools.cli.cli_main import cli_group  # the `tfx` console script's own entry point

    return cli_group.main(args=list(sys.argv[1:] if argv is None else argv), prog_name="tfx", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
