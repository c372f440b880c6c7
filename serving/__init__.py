"""Serving for kdem-tf: embedder export, ScaNN gallery index, TF Serving-compatible REST server, client.

See docs/serving.md.
"""

from kdem_tf import console as _console

_console.start_if_entry_point("serving")  # a clean console for `python -m serving.…` (kdem_tf/console.py)
