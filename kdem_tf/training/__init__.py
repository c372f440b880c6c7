"""Training plumbing, one concern a module: checkpointing.py (atomic checkpoints, the latest pointer),
run_history.py (history.jsonl, committed with each checkpoint), devices.py (mixed precision, XLA,
distribution strategy), progress.py (the run's progress bar and phase times), fault_injection.py
(the resume tests' self-kill). The loop itself is `kdem_tf.train`.
"""


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, mismatched run folder...); the message says what to do."""
