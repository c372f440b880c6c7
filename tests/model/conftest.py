"""Fixtures of the model tests: a torchvision ResNet-50 state dict with the published key names.

The names and shapes are written out here from torchvision's `resnet50()` (conv1, bn1,
layer1..layer4 of [3, 4, 6, 3] bottlenecks, downsample.0/.1 on the first block of each,
fc), not derived from kdem_tf's code, so a mapping error there cannot hide.
"""
from __future__ import annotations

import json
import struct
from typing import Dict

import numpy as np
import pytest

_SAFETENSORS_DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int64"): "I64"}


def write_safetensors(path, tensors: Dict[str, np.ndarray]) -> None:
    """Writes a safetensors file (8-byte LE header length, JSON header, raw LE data), as the format's spec."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


def torchvision_resnet50_state(seed: int = 0) -> Dict[str, np.ndarray]:
    """Random values under torchvision resnet50's state-dict names and shapes (OIHW convs).

    Conv weights are He-scaled and BN statistics moderate so that activations stay
    finite and of order 1 through the 16 bottlenecks."""
    rng = np.random.default_rng(seed)
    state: Dict[str, np.ndarray] = {}

    def conv(name, out_channels, in_channels, kernel):
        fan_in = in_channels * kernel * kernel
        state[f"{name}.weight"] = (rng.standard_normal((out_channels, in_channels, kernel, kernel), np.float32)
                                   * np.float32(np.sqrt(2.0 / fan_in)))

    def bn(name, channels):
        state[f"{name}.weight"] = rng.uniform(0.2, 1.0, channels).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0.0, 0.1, channels).astype(np.float32)
        state[f"{name}.running_mean"] = rng.normal(0.0, 0.1, channels).astype(np.float32)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(100, np.int64)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    in_channels = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            conv(f"{prefix}.conv1", planes, in_channels, 1)
            bn(f"{prefix}.bn1", planes)
            conv(f"{prefix}.conv2", planes, planes, 3)
            bn(f"{prefix}.bn2", planes)
            conv(f"{prefix}.conv3", 4 * planes, planes, 1)
            bn(f"{prefix}.bn3", 4 * planes)
            if block == 0:
                conv(f"{prefix}.downsample.0", 4 * planes, in_channels, 1)
                bn(f"{prefix}.downsample.1", 4 * planes)
            in_channels = 4 * planes
    state["fc.weight"] = rng.normal(0.0, 0.01, (1000, 2048)).astype(np.float32)
    state["fc.bias"] = np.zeros(1000, np.float32)
    return state


@pytest.fixture(scope="session")
def torchvision_state() -> Dict[str, np.ndarray]:
    return torchvision_resnet50_state()


@pytest.fixture(scope="session")
def torchvision_safetensors(tmp_path_factory, torchvision_state) -> str:
    """resnet50.tv_in1k-style safetensors file holding `torchvision_state` (~100 MB, written once)."""
    path = tmp_path_factory.mktemp("weights") / "resnet50.tv_in1k.safetensors"
    write_safetensors(path, torchvision_state)
    return str(path)
