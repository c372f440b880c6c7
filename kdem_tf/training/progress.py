"""The progress a training run shows: one bar for the run, and where its wall time went."""
from __future__ import annotations

import time

# The running means a progress display shows, in this order (the trainer's metric names).
SHOWN_METRICS = ("loss", "id_loss", "wrt_loss", "div_loss", "con_loss", "mi_v_mean")


class RunProgress:
    """One progress bar for a whole training run (`train(verbose=3)`, the demo): steps done of the
    run, the epoch and the running loss; `write` prints a line (an evaluation) above the bar."""

    def __init__(self, total_steps: int, start_step: int, epochs: int):
        import sys

        from tqdm import tqdm

        self._tqdm = tqdm
        self.epochs = epochs
        self.bar = tqdm(total=total_steps, initial=start_step, desc="training", unit="step", file=sys.stderr,
                        dynamic_ncols=True)

    def update(self, epoch: int, metrics: dict) -> None:
        self.bar.set_postfix_str(f"epoch {epoch}/{self.epochs} " + " ".join(
            f"{k} {metrics[k]:.3g}" for k in SHOWN_METRICS[:3] if k in metrics), refresh=False)
        self.bar.update(1)

    def write(self, line: str) -> None:
        self._tqdm.write(line, file=self.bar.fp)

    def close(self) -> None:
        self.bar.close()


class PhaseTimes:
    """Wall seconds of a run's phases, in the order first seen: `with times("evaluations"): ...`.

    `train()` times its setup, the first step (which traces the step function), the other
    steps, the evaluations, the checkpoints and the final save, and returns them; the demo
    and the TFX Trainer's log print `summary()`, where a run's time goes without a profiler."""

    def __init__(self):
        self.seconds: dict = {}
        self.counts: dict = {}

    def __call__(self, name: str):
        import contextlib

        @contextlib.contextmanager
        def phase():
            started = self.clock()
            try:
                yield
            finally:
                self.since(name, started)
        return phase()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.counts[name] = self.counts.get(name, 0) + 1

    def since(self, name: str, started: float) -> None:
        """Adds the time from `started` (a `clock()` reading) to now to `name`."""
        self.add(name, self.clock() - started)

    @staticmethod
    def clock() -> float:
        return time.perf_counter()

    def as_dict(self) -> dict:
        return {name: round(seconds, 2) for name, seconds in self.seconds.items()}

    def summary(self) -> str:
        parts = []
        for name, seconds in self.seconds.items():
            count = self.counts[name]
            each = f" ({count}, {seconds / count:.2f} s each)" if count > 1 else ""
            parts.append(f"{name} {seconds:.0f} s{each}")
        return "time: " + ", ".join(parts)
