"""What every benchmark prints about the machine it ran on."""
from __future__ import annotations

import os
import platform
import time
import tracemalloc


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_gb = None
    try:
        with open("/proc/meminfo") as f:
            memory_gb = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb, "python": platform.python_version()}
    try:
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["devices"] = [d.device_type for d in tf.config.list_physical_devices()]
    except ImportError:
        pass
    return info


def traced(fn):
    """(result, seconds, peak traced MiB) of fn()."""
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2 ** 20


def write_json(path: str, results: dict) -> None:
    """Writes a benchmark's results with the machine they ran on (`machine_info`)."""
    import json

    with open(path, "w") as f:
        json.dump(dict(results, machine=machine_info()), f, indent=2)


# --------------------------------------------------------------------------- repeats, spread, verdicts
# One owner for "median of repeats, min..max spread, and a verdict only beyond the spread".

NOISE_VERDICT = "within noise (cannot tell)"


def spread(samples) -> dict:
    """Median, min and max of repeated measurements, and their relative spread (max - min) / median."""
    import statistics

    values = [float(s) for s in samples]
    if not values:
        raise ValueError("spread of no measurements")
    median = statistics.median(values)
    relative = (max(values) - min(values)) / median if median else float("inf")
    return {"median": round(median, 6), "min": round(min(values), 6), "max": round(max(values), 6),
            "repeats": len(values), "relative_spread": round(relative, 4)}


def wait_for(out) -> None:
    """Blocks until a step's result is computed (a dict of tensors, a tensor, or anything else)."""
    if isinstance(out, dict) and out:
        out = next(iter(out.values()))
    if hasattr(out, "numpy"):
        out.numpy()


def time_repeats(fn, steps: int, repeats: int) -> dict:
    """Seconds per call of `fn()`: one untimed warm-up call (tracing), then `repeats` timings of
    `steps` calls each, each timing ending when the last call's result is computed; `spread` of them."""
    if steps < 1 or repeats < 1:
        raise ValueError(f"steps ({steps}) and repeats ({repeats}) must be >= 1")
    wait_for(fn())
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            out = fn()
        wait_for(out)
        timings.append((time.perf_counter() - started) / steps)
    return spread(timings)


def combined_spread(*figures: dict) -> float:
    """The relative spread of a ratio (or product) of figures: the sum of theirs."""
    return round(sum(f["relative_spread"] for f in figures), 4)


def target_verdict(value: float, target: float, relative_spread: float, op: str = ">=") -> dict:
    """"met" / "not met" when the relative margin |value / target - 1| exceeds `relative_spread`
    (the combined spread of the figures `value` is made of), else `NOISE_VERDICT` (met is None)."""
    if op not in (">=", "<="):
        raise ValueError(f"op {op!r}: >= or <=")
    margin = value / target - 1
    if abs(margin) <= relative_spread:
        met, verdict = None, NOISE_VERDICT
    else:
        met = value >= target if op == ">=" else value <= target
        verdict = "met" if met else "not met"
    return {"value": round(value, 4), "target": target, "op": op, "margin": round(margin, 4),
            "spread": round(relative_spread, 4), "met": met, "verdict": verdict}


def verdict_line(label: str, v: dict) -> str:
    """One printed target line: value, target, margin, spread, verdict."""
    return (f"{label}: {v['value']:.3g} (target {v['op']} {v['target']:g}; margin {v['margin']:+.1%}, "
            f"spread {v['spread']:.1%}): {v['verdict']}")
