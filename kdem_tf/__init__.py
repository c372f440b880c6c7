
from kdem_tf import console as _console  # imports no TensorFlow

_console.start_if_entry_point("kdem_tf")  # a clean console for `python -m kdem_tf.…` (kdem_tf/console.py)
