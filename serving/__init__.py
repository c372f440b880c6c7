"""Serving for kdem-tf, in three rooms (docs/serving.md):

- `serving.export`: what is written before serving: the embedder SavedModel, TFLite models, the
  gallery's ScaNN index, the retrieval SavedModel (`python -m serving.export`, `python -m serving.index`);
- `serving.server`: TF Serving's REST and gRPC APIs plus gallery search (`python -m serving.server`);
- `serving.client`: REST and gRPC clients (`python -m serving.client`).

`serving.server` reads what `serving.export` writes; `serving.client` imports neither. On-disk
names, signature names and version folders: `kdem_tf.artifacts`.
"""

from kdem_tf import console as _console

_console.start_if_entry_point("serving")  # a clean console for `python -m serving.…` (kdem_tf/console.py)
