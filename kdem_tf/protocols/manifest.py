"""The single-gallery protocol of a CSV manifest (`kdem_tf.data.manifest`), as torchreid scores Market-1501.

One trial: the manifest's `query` lines against its `gallery` lines. For each query,
gallery images of the same id and the same camera are dropped; CMC and mAP are averaged
over the queries that keep a match (torchreid's `eval_market1501` / `evaluate_rank`),
mINP too (the AGW survey's definition, as in kdem_tf.evaluation). Either side may mix
modalities; each image is embedded with its own line's modality.
"""
from __future__ import annotations

from typing import List, Sequence

from kdem_tf import evaluation as ev
from kdem_tf.image_contract import MODALITIES


def _side(records: Sequence, what: str) -> ev.Split:
    modalities = tuple(r.modality for r in records)
    present = [m for m in MODALITIES if m in modalities]
    split = ev._split([r.path for r in records], [r.person_id for r in records], [r.camera for r in records],
                      "+".join(present), what)
    return split if len(present) < 2 else ev.Split(split.paths, split.pids, split.cams, split.modality,
                                                   modalities)


def manifest_trials(csv_path: str) -> List[ev.Trial]:
    """[Trial 0: query lines vs gallery lines]; paths relative to the CSV's folder."""
    from kdem_tf.data import datasets, manifest  # imports TensorFlow

    try:
        splits = manifest.read_manifest(csv_path)
    except datasets.DatasetError as e:
        raise ev.EvaluationError(str(e)) from e
    return [ev.Trial(0, _side(splits["query"], f"{csv_path}: no 'query' lines"),
                     _side(splits["gallery"], f"{csv_path}: no 'gallery' lines"))]
