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
