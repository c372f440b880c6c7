"""The one way every entry point builds its argument parser: `python -m ...` in its usage, every default
in its help, no prefix matching (`--num-shard` is an error, not `--num-shards`), and a required flag
marked as such.

Imports only argparse (and, for `presets_help`, the config dataclasses): a command builds its parser and answers `--help` (or a typo) before TensorFlow,
Beam or TFX load.
"""
from __future__ import annotations

import argparse
from typing import Any

REQUIRED = "REQUIRED: "


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults formatter, quiet where a default says nothing: a switch that is off
    (`store_true`), an empty list, a None that the help text explains, a help that names its own default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is argparse.SUPPRESS or default is None or default is False or default == []
                or "default" in text.lower() or text.startswith(REQUIRED)):
            return text
        return super()._get_help_string(action)


class RawEpilogFormatter(DefaultsHelpFormatter):
    """DefaultsHelpFormatter that keeps the line breaks of a text that has them (an epilog's list)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text:
            return super()._fill_text(text, width, indent)
        return "\n".join(indent + line for line in text.splitlines())


def parser(module: str, description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The ArgumentParser of `python -m <module>` (see the module docstring)."""
    kwargs.setdefault("formatter_class", DefaultsHelpFormatter if "epilog" not in kwargs else RawEpilogFormatter)
    return argparse.ArgumentParser(prog=f"python -m {module}", description=description, allow_abbrev=False,
                                   **kwargs)


def required(help_text: str) -> dict:
    """add_argument keywords of a required flag: marked in --help, no "(default: None)"."""
    return dict(required=True, default=argparse.SUPPRESS, help=REQUIRED + help_text)


def presets_help() -> str:
    """One line per preset of kdem_tf/config.py: what --help says about them (read from the presets)."""
    from kdem_tf import config  # yaml and dataclasses only

    lines = ["presets (kdem_tf/config.py; --print-config shows every value):"]
    for name in sorted(config.PRESETS):
        c = config.load_config(name)
        steps = f"{c.optim.steps_per_epoch} steps" if c.optim.steps_per_epoch else "one pass of the data"
        evaluation = f"evaluates every {c.eval_every} epochs" if c.eval_every else "no evaluation during training"
        lines.append(f"  {name}: {c.optim.epochs} epochs of {steps}, {c.model.backbone} ResNet at width "
                     f"{c.model.width:g}, backbone weights {c.model.backbone_weights}, images "
                     f"{c.data.image_size[0]}x{c.data.image_size[1]}, {evaluation}")
    return "\n".join(lines)
