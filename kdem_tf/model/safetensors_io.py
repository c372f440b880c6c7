"""A reader for safetensors files in NumPy, without PyTorch or the `safetensors` package.

Format (huggingface/safetensors): an 8-byte little-endian unsigned header length
n, then n bytes of UTF-8 JSON mapping each tensor name to {"dtype", "shape",
"data_offsets": [begin, end]} (offsets into the data that follows the header; an
optional "__metadata__" entry holds strings), then the raw little-endian data.
This is the file timm publishes for `resnet50.tv_in1k` (torchvision's ImageNet
ResNet-50, the weights AGW starts from).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Dict

import numpy as np

# safetensors dtype -> NumPy little-endian dtype (BF16 is widened to float32 by hand).
_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
           "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the format's own limit


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file; the message names the file and the entry."""


def _read_header(path: str, handle, file_size: int) -> Dict[str, dict]:
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise SafetensorsError(f"{path}: {file_size} bytes, too short for a safetensors file (8-byte header length)")
    (header_length,) = struct.unpack("<Q", prefix)
    if header_length > min(_MAX_HEADER_BYTES, file_size - 8):
        raise SafetensorsError(f"{path}: header length {header_length} does not fit a file of {file_size} bytes; "
                               f"not a safetensors file")
    try:
        header = json.loads(handle.read(header_length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SafetensorsError(f"{path}: the header is not UTF-8 JSON ({error})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: the header is not a JSON object")
    header.pop("__metadata__", None)
    return header


def _to_array(path: str, name: str, entry: dict, data: np.ndarray) -> np.ndarray:
    try:
        dtype, shape, (begin, end) = entry["dtype"], [int(d) for d in entry["shape"]], entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise SafetensorsError(f"{path}: tensor {name!r}: entry {entry!r} lacks dtype, shape or data_offsets") from None
    if dtype not in _DTYPES:
        raise SafetensorsError(f"{path}: tensor {name!r}: unsupported dtype {dtype!r}; known: {sorted(_DTYPES)}")
    item = np.dtype(_DTYPES[dtype])
    expected_bytes = int(np.prod(shape, dtype=np.int64)) * item.itemsize
    if not 0 <= begin <= end <= data.size or end - begin != expected_bytes:
        raise SafetensorsError(f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] do not hold {dtype} "
                               f"{shape} ({expected_bytes} bytes) within the {data.size} data bytes")
    array = data[begin:end].view(item).reshape(shape)
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return np.array(array)  # a copy: the memory map closes


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """All tensors of a safetensors file, by name, as NumPy arrays (native byte order).

    Raises:
        FileNotFoundError: no such file.
        SafetensorsError: a malformed header or a tensor whose offsets do not fit.
    """
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        header = _read_header(path, handle, file_size)
        data_start = handle.tell()
    if file_size == data_start:
        data = np.zeros((0,), np.uint8)
    else:
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)
    tensors = {name: _to_array(path, name, entry, data) for name, entry in header.items()}
    del data
    return tensors
