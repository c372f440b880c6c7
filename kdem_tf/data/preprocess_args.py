"""The command line of `python -m kdem_tf.data.preprocess`, parsed before Beam and TensorFlow load.

`kdem_tf/data/preprocess.py` calls `parse_args` first thing when it runs as a command, so that
`--help`, an unknown flag and a refused Beam runner answer in a fraction of a second.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from kdem_tf import cli_help, datasets
from kdem_tf.data import beam_options
from kdem_tf.datasets import cli_options

DESCRIPTION = ("Beam preprocessing: a raw dataset folder (or a CSV manifest) -> sharded TFRecords of the original "
               "images (nothing is resized here: the training preset's image size applies when training reads them).")


def build_parser() -> Tuple[argparse.ArgumentParser, cli_options.Owned]:
    """(the parser, the datasets' own options it holds)."""
    parser = cli_help.parser(
        "kdem_tf.data.preprocess", DESCRIPTION,
        epilog="Beam options: --beam-arg=--runner=DataflowRunner ... or after a lone --, e.g. "
               "-- --runner=FlinkRunner --flink_master=HOST:8081. Without them: the DirectRunner in this "
               "process (--direct_running_mode=in_memory).")
    parser.add_argument("--dataset", choices=datasets.names(), **cli_help.required("the dataset's layout"))
    parser.add_argument("--data-root", **cli_help.required("dataset root; manifest: the CSV file"))
    parser.add_argument("--output", **cli_help.required("output folder (written to a temporary sibling, then "
                                                        "renamed)"))
    owned = cli_options.gather("preprocess_options")
    cli_options.add(parser, owned)
    parser.add_argument("--num-shards", type=int, default=None,
                        help="shards per split (default: ~2,000 images each)")
    parser.add_argument("--overwrite", action="store_true", help="replace a complete output folder")
    parser.add_argument("--beam-arg", dest="beam_args", action="append", default=[], metavar="ARG",
                        help=beam_options.BEAM_ARG_HELP)
    return parser, owned


def parse_args(argv: Optional[Sequence[str]] = None) -> Tuple[argparse.Namespace, Dict[str, Any], List[str]]:
    """(the flags, the chosen dataset's own options, the Beam options). Errors exit with status 2."""
    own_args, separated = beam_options.split_at_separator(sys.argv[1:] if argv is None else argv)
    parser, owned = build_parser()
    args = parser.parse_args(own_args)
    cli_options.refuse_foreign(parser, args, owned)
    beam_args = args.beam_args + separated
    try:
        beam_options.check_beam_args(beam_args)
    except beam_options.UnsupportedRunnerError as error:
        parser.error(str(error))
    return args, cli_options.values(args, owned, args.dataset), beam_args
