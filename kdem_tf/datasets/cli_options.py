"""The datasets' own command-line options, gathered for one command line (preprocessing or evaluation).

Each dataset declares the options it reads (`Dataset.preprocess_options`, `Dataset.eval_options`);
a command adds every registered dataset's, once per flag, and refuses a value given for a dataset
that does not read it.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Tuple

from kdem_tf import datasets
from kdem_tf.datasets.base import CliOption

Owned = Dict[str, Tuple[CliOption, List[str]]]  # flag → (its option, the datasets that read it)


def gather(kind: str) -> Owned:
    """{flag: (option, owners)} of every registered dataset's `kind` ("preprocess_options" | "eval_options")."""
    out: Owned = {}
    for name in datasets.names():
        for option in getattr(datasets.get(name), kind):
            out.setdefault(option.flag, (option, []))[1].append(name)
    return out


def add(parser: argparse.ArgumentParser, owned: Owned) -> None:
    for option, owners in owned.values():
        kwargs = dict(option.kwargs)
        kwargs["help"] = f"{kwargs.get('help', '')} [{' / '.join(owners)}]".strip()
        parser.add_argument(option.flag, **kwargs)


def refuse_foreign(parser: argparse.ArgumentParser, args: argparse.Namespace, owned: Owned) -> None:
    """parser.error for an option set (not at its default) that the chosen dataset does not read."""
    for flag, (option, owners) in owned.items():
        if args.dataset not in owners and getattr(args, option.dest) != parser.get_default(option.dest):
            parser.error(f"{flag} is an option of {' / '.join(owners)}, not of {args.dataset}")


def values(args: argparse.Namespace, owned: Owned, dataset: str) -> Dict[str, Any]:
    """{dest: value} of the options the dataset reads."""
    return {o.dest: getattr(args, o.dest) for o, owners in owned.values() if dataset in owners}
