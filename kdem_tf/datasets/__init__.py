"""The dataset registry: one module per dataset (`sysu`, `regdb`, `llcm`, `manifest`), one line each here.

    from kdem_tf import datasets
    datasets.names()            # ('sysu', 'regdb', 'llcm', 'manifest', ...)
    datasets.get("sysu")        # the Dataset: splits, readers, protocol, options, synthetic stand-in

A new dataset is one module with a `Dataset` subclass (kdem_tf/datasets/base.py) and one
`register(...)` call: in this file for a built-in dataset, or in a module of one's own named in
the environment variable KDEM_DATASET_MODULES (comma-separated module names, imported on first
use of the registry, so that the command lines and TFX components see it too). docs/datasets.md.
"""
from __future__ import annotations

import importlib
import os
from typing import Dict, Tuple

from kdem_tf.datasets.base import Dataset

PLUGIN_ENV = "KDEM_DATASET_MODULES"
DEFAULT = "sysu"  # the dataset of the built-in demo and of commands run without --dataset
_REGISTRY: Dict[str, Dataset] = {}
_BUILT_IN = ("kdem_tf.datasets.sysu", "kdem_tf.datasets.regdb", "kdem_tf.datasets.llcm",
             "kdem_tf.datasets.manifest")


def register(dataset: Dataset) -> Dataset:
    """Adds a dataset under its name (a second dataset of one name is refused). Returns it."""
    if not dataset.name or not dataset.name.isidentifier():
        raise ValueError(f"a dataset's name must be an identifier, got {dataset.name!r}")
    known = _REGISTRY.get(dataset.name)
    if known is not None and type(known) is not type(dataset):
        raise ValueError(f"dataset {dataset.name!r} is already registered by {type(known).__module__}")
    _REGISTRY[dataset.name] = dataset
    return dataset


def unregister(name: str) -> None:
    """Removes a dataset (tests that register a toy one)."""
    _REGISTRY.pop(name, None)


def _load() -> None:
    for module in _modules():
        importlib.import_module(module)  # each registers its dataset on import


def _modules() -> Tuple[str, ...]:
    return _BUILT_IN + tuple(m.strip() for m in os.environ.get(PLUGIN_ENV, "").split(",") if m.strip())


def names() -> Tuple[str, ...]:
    """The registered datasets' names: the built-in ones in their fixed order, then the plug-ins."""
    _load()
    order = {module: i for i, module in enumerate(_modules())}
    return tuple(sorted(_REGISTRY, key=lambda name: order.get(type(_REGISTRY[name]).__module__, len(order))))


def get(name: str) -> Dataset:
    """The dataset of that name; KeyError with the known names otherwise."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(_REGISTRY)}") from None
