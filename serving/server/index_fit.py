"""Whether a gallery index fits the served embedder (issue #24 item 6): checked once at start.

An index is searched with the embedder version it was built with (its manifest's `model_version`),
so that version must exist under the model base, and its embedding dimension and image contract must
be the index's: otherwise the scores would compare vectors of two different models (or the queries
would be decoded with other pixels than the gallery). A mismatch refuses the start with
`IndexMismatch`, whose message names both sides.
"""
from __future__ import annotations

import json
from typing import Optional

from kdem_tf.artifacts import list_versions


class IndexMismatch(ValueError):
    """The gallery index does not fit the served model (the message names both)."""


def describe_contract(contract: Optional[dict]) -> str:
    return json.dumps(contract, sort_keys=True) if contract is not None else "none recorded"


def check_fit(index_dir: str, manifest: dict, loaded) -> None:
    """Raises IndexMismatch when the index's dimension or image contract differs from `loaded`'s
    (a serving.server.versions.LoadedVersion of the embedder)."""
    where = f"index {index_dir} (model version {manifest.get('model_version')})"
    served = f"model {loaded.path} (version {loaded.version})"
    dimension = manifest.get("embedding_dim")
    if dimension is not None and int(dimension) != loaded.embedder.embedding_dim:
        raise IndexMismatch(f"{where} holds {dimension}-d embeddings but {served} embeds "
                            f"{loaded.embedder.embedding_dim}-d: rebuild the index with this model")
    contract = manifest.get("image_contract")
    model_contract = loaded.embedder.contract.to_dict()
    if contract is not None and contract != model_contract:
        raise IndexMismatch(f"{where} was built with image contract {describe_contract(contract)} but {served} "
                            f"uses {describe_contract(model_contract)}: rebuild the index with this model")


def index_version(index_dir: str, manifest: dict, served):
    """The embedder version to search `index_dir` with (pinned in `served`, a ServedModel), checked
    against the index; None when the manifest names no version (the served one is checked then)."""
    built_with = manifest.get("model_version")
    if built_with is None:
        check_fit(index_dir, manifest, served.get())
        return None
    on_disk = list_versions(served.base_path)
    if int(built_with) not in on_disk:
        raise IndexMismatch(f"index {index_dir} was built with model version {built_with}, which is not under "
                            f"{served.base_path} (versions there: {on_disk or 'none'}): rebuild the index "
                            f"or restore that version")
    loaded = served.pin(int(built_with))
    check_fit(index_dir, manifest, loaded)
    return loaded
