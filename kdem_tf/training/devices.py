"""What runs where: mixed precision, XLA and the distribution strategy, chosen for this machine."""
from __future__ import annotations

import json
import os


def cpu_has_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX-BF16 (fast bfloat16 matmuls in oneDNN)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_mixed_precision(setting: str) -> str:
    """auto: mixed_float16 on GPUs, mixed_bfloat16 on CPUs with bf16 units, else float32."""
    if setting != "auto":
        return setting
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_has_bf16() else "float32"


def choose_jit(setting: str) -> bool:
    """auto: XLA on GPUs only (measured 3x slower on this CPU for the KDEM step)."""
    if setting != "auto":
        return setting == "on"
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def make_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, else MirroredStrategy."""
    import tensorflow as tf

    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    if tf_config.get("cluster"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)
