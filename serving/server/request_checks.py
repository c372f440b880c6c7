"""Checks of a client's request before any large allocation, for both transports.

Each raises INVALID_ARGUMENT (400) with a one-line message that echoes at most a bounded prefix of
the offending value (`excerpt`): a client's mistake never reaches the log as a traceback.

- `parse_version`: a URL version segment (ASCII digits, int64);
- `check_json_depth`, `check_json_numbers`: a parsed REST body's nesting, and the leaves of a
  numeric tensor (no bool, no float for an integer dtype, no value outside the dtype's range);
- `check_k`: results per query, an integer in 1..max_k, on every route and signature;
- `check_image_pixels`: decoded pixels of each encoded image, from its header (serving.server.image_header);
- `tensor_arrays`: gRPC TensorProtos checked against the signature's inputs (dtype, declared shape,
  the number of values given) BEFORE `tf.make_ndarray` expands them.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from serving.server.errors import invalid
from serving.server.image_header import ImageHeaderError, image_size

MAX_VERSION = 2 ** 63 - 1  # versions are int64 (TF Serving's model_spec.version)
# The TensorProto field holding each dtype's values when they are not in tensor_content.
VALUE_FIELDS = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
                types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
                types_pb2.DT_UINT8: "int_val", types_pb2.DT_UINT16: "int_val", types_pb2.DT_INT64: "int64_val",
                types_pb2.DT_STRING: "string_val", types_pb2.DT_BOOL: "bool_val",
                types_pb2.DT_HALF: "half_val", types_pb2.DT_BFLOAT16: "half_val",
                types_pb2.DT_UINT32: "uint32_val", types_pb2.DT_UINT64: "uint64_val"}


def excerpt(value, limit: int = 64) -> str:
    """repr of a value cut to `limit` characters, with its full length when cut."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:limit]!r}... ({len(text)} characters)"


def parse_version(text, limit: int = 64):
    """A URL version segment -> int (None when absent); ASCII digits only, at most int64."""
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_VERSION:
        raise invalid(f"Malformed request: version {excerpt(text, limit)} is not a number in 0..{MAX_VERSION}")
    return int(text)


def check_json_depth(value, max_depth: int) -> None:
    """A parsed JSON value nested at most `max_depth` lists/objects deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > max_depth:
                raise invalid(f"JSON Value: nested deeper than {max_depth} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))


def check_json_numbers(value, dtype: tf.DType, name: str, limit: int = 64) -> None:
    """Every leaf of a JSON numeric tensor fits `dtype` exactly: no silent coercion by numpy.

    Integers: int values in the dtype's range (not bool, not 1.5, not 1e30); floats: finite
    int or float values; bool: true/false."""
    numpy_dtype = np.dtype(dtype.as_numpy_dtype)
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if numpy_dtype == np.bool_:
            ok = isinstance(item, bool)
        elif np.issubdtype(numpy_dtype, np.integer):
            info = np.iinfo(numpy_dtype)
            ok = type(item) is int and info.min <= item <= info.max
        else:
            ok = type(item) in (int, float) and math.isfinite(item)
        if not ok:
            raise invalid(f"input {excerpt(name, limit)}: {excerpt(item, limit)} is not a valid {dtype.name}")


def check_k(value, max_k: int, where: str = "k", limit: int = 64) -> int:
    """Results per query: an integer (not bool, not float) in 1..max_k."""
    if type(value) not in (int, np.int32, np.int64) or not 1 <= int(value) <= max_k:
        raise invalid(f"{where}: k must be an integer in 1..{max_k}, got {excerpt(value, limit)}")
    return int(value)


def check_image_pixels(images: Sequence[bytes], max_pixels: int, name: str = "image_bytes") -> None:
    """Each encoded image is a PNG/JPEG/BMP of at most `max_pixels` pixels (header only, no decoding)."""
    for i, data in enumerate(images):
        try:
            fmt, width, height = image_size(data)  # walks the JPEG segments: ICC / EXIF may come first
        except ImageHeaderError as e:
            raise invalid(f"{name}[{i}]: not a decodable JPEG/PNG/BMP image: {e}") from None
        if width * height > max_pixels:
            raise invalid(f"{name}[{i}]: {fmt} of {width}x{height} = {width * height} pixels: at most "
                          f"{max_pixels} per image (--max-image-pixels)")


def tensor_arrays(protos, specs: Dict[str, tf.TensorSpec], max_instances: int) -> Dict[str, np.ndarray]:
    """A PredictRequest's inputs -> numpy arrays, each checked against its spec before it is expanded."""
    if set(protos) != set(specs):
        raise invalid(f"inputs {sorted(protos)[:16]} do not match the signature's inputs {sorted(specs)}")
    arrays = {}
    for name, spec in specs.items():
        proto = protos[name]
        check_tensor_proto(proto, spec, name, max_instances)
        try:
            arrays[name] = tf.make_ndarray(proto)
        except (TypeError, ValueError) as e:
            raise invalid(f"input {name!r}: malformed TensorProto: {excerpt(str(e))}") from None
    return arrays


def check_tensor_proto(proto, spec: tf.TensorSpec, name: str, max_instances: int) -> None:
    """dtype, declared shape (against the spec's, batch <= max_instances) and the count of values given."""
    if proto.dtype != spec.dtype.as_datatype_enum:
        got = types_pb2.DataType.Name(proto.dtype) if proto.dtype in types_pb2.DataType.values() else proto.dtype
        raise invalid(f"input {name!r}: expects {spec.dtype.name} but got {got}")
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input {name!r}: a tensor of unknown rank")
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims) or (spec.shape.rank is not None and not spec.shape.is_compatible_with(dims)):
        raise invalid(f"input {name!r}: declared shape {dims[:8]} does not match the signature's "
                      f"{spec.shape.as_list() if spec.shape.rank is not None else 'shape'}")
    if dims and dims[0] > max_instances:
        raise invalid(f"input {name!r}: batch of {dims[0]}: at most {max_instances} per request")
    declared = math.prod(dims)
    if proto.tensor_content:
        itemsize = np.dtype(spec.dtype.as_numpy_dtype).itemsize
        given, rest = divmod(len(proto.tensor_content), itemsize)
        given = given if rest == 0 else -1
    elif proto.dtype in VALUE_FIELDS:
        given = len(getattr(proto, VALUE_FIELDS[proto.dtype]))
    else:
        raise invalid(f"input {name!r}: values of {spec.dtype.name} only as tensor_content")
    if given != declared:
        raise invalid(f"input {name!r}: declared shape {dims[:8]} holds {declared} values but "
                      f"{'a partial value' if given < 0 else given} given")
