"""Features by dataset-relative path: the .npz tables of `--features` and the embedders' output."""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from kdem_tf.evaluation.metrics import check_features
from kdem_tf.evaluation.trials import EvaluationError, Trial


class FeatureTable:
    """Features by dataset-relative path. features: [N, D] float64, finite; paths unique."""

    def __init__(self, paths: Sequence[str], features: np.ndarray, source: str):
        self.source = source
        self.features = check_features(features, source)
        self.paths = [normalise_path(p.decode() if isinstance(p, bytes) else str(p)) for p in paths]
        if len(self.paths) != len(self.features):
            raise EvaluationError(f"{source}: {len(self.paths)} paths but {len(self.features)} feature rows")
        self.index = {p: i for i, p in enumerate(self.paths)}
        if len(self.index) != len(self.paths):
            seen: set = set()
            dup = [p for p in self.paths if p in seen or seen.add(p)]
            raise EvaluationError(f"{source}: {len(dup)} duplicate paths, first {dup[0]!r}")

    def lookup(self, paths: Sequence[str], what: str) -> np.ndarray:
        """[len(paths), D] rows of the given paths; names the first missing path and the count."""
        missing = [p for p in paths if p not in self.index]
        if missing:
            raise EvaluationError(f"{self.source}: {len(missing)} of {len(paths)} {what} paths have no "
                                     f"features, first {missing[0]!r} (paths are relative to the data root)")
        return self.features[[self.index[p] for p in paths]]


def normalise_path(path: str) -> str:
    path = path.replace("\\", "/")
    return path[2:] if path.startswith("./") else path


def load_feature_tables(npz_path: str) -> Dict[Optional[int], FeatureTable]:
    """Reads a features .npz → {None: shared table, t: table of trial t}."""
    try:
        data = np.load(npz_path, allow_pickle=False)
        arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise EvaluationError(f"{npz_path}: features file not found") from None
    except ValueError as e:  # object arrays need pickle, which we refuse
        raise EvaluationError(f"{npz_path}: unreadable ({e}); store paths as np.array(paths, dtype=str)") from None
    except OSError as e:
        raise EvaluationError(f"{npz_path}: not a .npz file ({e})") from None
    tables = {}
    for key in arrays:
        if not key.startswith("features"):
            continue
        suffix = key[len("features"):]
        if suffix and not (suffix.startswith("_trial") and suffix[6:].isdigit()):
            continue
        trial = int(suffix[6:]) if suffix else None
        paths_key = "paths" + suffix
        if paths_key not in arrays:
            raise EvaluationError(f"{npz_path}: has {key!r} but no {paths_key!r}")
        tables[trial] = FeatureTable(arrays[paths_key].reshape(-1), arrays[key], f"{npz_path}[{key}]")
    if not tables:
        raise EvaluationError(f"{npz_path}: no 'features' array (expected 'paths' and 'features', "
                                 f"or 'paths_trial{{t}}' and 'features_trial{{t}}'); found {sorted(arrays)}")
    dims = {t.features.shape[1] for t in tables.values()}
    if len(dims) > 1:
        raise EvaluationError(f"{npz_path}: feature sets have different dims {sorted(dims)}")
    return tables


def path_features(paths: Sequence[str], features: np.ndarray, source: str) -> Callable[[Trial], Tuple]:
    """features_for(trial) → (query [Q, D], gallery [G, D]) looked up by dataset path."""
    table = FeatureTable(paths, features, source)

    def features_for(trial: Trial):
        return table.lookup(trial.query.paths, "query"), table.lookup(trial.gallery.paths, "gallery")
    return features_for
