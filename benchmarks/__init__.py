
from kdem_tf import console as _console

_console.start_if_entry_point("benchmarks")  # a clean console for `python -m benchmarks.…` (kdem_tf/console.py)
