"""Result variants: the one vocabulary that keeps every evaluation variant apart and labelled.

A result row is one combination of

- the embedding: `plain`, or `flip` (flip test-time augmentation; the label is reserved here,
  the option itself comes with the flip work),
- the ranking: plain distances, or k-reciprocal re-ranking (`RerankParams.label`,
  e.g. "rerank(k1=20,k2=6,λ=0.3)"),
- the gallery sampling of its protocol, the dataset's (`Dataset.sampling_label`): SYSU-MM01 `agw`
  (AGW's seeded draw) or `official` (the dataset's rand_perm_cam.mat); RegDB `index` (its idx
  files); LLCM `deen` (DEEN/test.py's random.seed(trial) draw); a manifest `single` (its one gallery).

`variant_key` names a row inside one run (metrics.json "variants" keys: "plain",
"rerank(...)", "flip", "flip+rerank(...)"); `describe` adds the sampling, so rows of runs
with different samplings stay apart when tables are put side by side (kdem_tf.report).
"""
from __future__ import annotations

from typing import Optional

PLAIN = "plain"
FLIP = "flip"


def variant_key(flip: bool = False, rerank_label: Optional[str] = None) -> str:
    """"plain", "flip", "rerank(...)" or "flip+rerank(...)"."""
    parts = ([FLIP] if flip else []) + ([rerank_label] if rerank_label else [])
    return "+".join(parts) or PLAIN


def display_label(key: str, sampling: str) -> str:
    """The row label of tables: e.g. "plain, agw sampling", "rerank(k1=20,k2=6,λ=0.3), official sampling"."""
    return f"{key}, {sampling} sampling"


def describe(key: str, sampling: str, flip: bool = False, rerank: Optional[dict] = None) -> dict:
    """The labelling fields of one metrics.json variant entry."""
    return {"variant": key, "label": display_label(key, sampling), "gallery_sampling": sampling,
            "flip": bool(flip), "rerank": rerank}
