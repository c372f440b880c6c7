
from kdem_tf import console as _console

_console.start_if_entry_point("pipeline")  # a clean console for `python -m pipeline.…` (kdem_tf/console.py)
