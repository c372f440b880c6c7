"""TF Serving's REST JSON format: request parsing, response formatting, metadata and errors.

Follows https://www.tensorflow.org/tfx/serving/api_rest:

- row format `{"signature_name": ..., "instances": [...]}` -> `{"predictions": [...]}`;
- columnar format `{"inputs": {...}}` -> `{"outputs": {...}}`;
- binary strings as `{"b64": "..."}`; string outputs named `*_bytes` are returned so;
- errors as `{"error": "..."}` with the HTTP status of the TF status code.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from kdem_tf.artifacts import SAVED_MODEL_FILE
from serving.server.errors import invalid


def parse_json(body: bytes, object_only: bool = True):
    """Request body -> JSON value (400 when malformed, or not an object when `object_only`)."""
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"JSON Parse error: {e}") from None
    if object_only and not isinstance(value, dict):
        raise invalid("JSON Value: request body must be a JSON object")
    return value


def decode_string(value, name: str) -> bytes:
    """A JSON string value ("text" or {"b64": "..."}) -> bytes."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError) as e:
            raise invalid(f"input {name!r}: unable to base64 decode: {e}") from None
    raise invalid(f"input {name!r}: expected a string or {{\"b64\": ...}}, got {type(value).__name__}")


def _strings(value, name: str):
    if isinstance(value, list):
        return [_strings(v, name) for v in value]
    return decode_string(value, name)


def to_array(value, spec: tf.TensorSpec, name: str) -> np.ndarray:
    """A JSON value -> numpy array of `spec`'s dtype; 400 when its type or shape does not fit."""
    try:
        if spec.dtype == tf.string:
            strings = _strings(value, name)
            array = np.empty(np.shape(strings) if isinstance(strings, list) else (), dtype=object)
            array[...] = strings if isinstance(strings, list) else strings
        else:
            if _has_type(value, (str, dict)):
                raise ValueError("strings or objects in a numeric tensor")
            array = np.asarray(value, dtype=spec.dtype.as_numpy_dtype)
    except ValueError as e:  # ragged lists, non-numeric values
        raise invalid(f"input {name!r}: cannot convert to {spec.dtype.name}: {e}") from None
    expected = spec.shape
    if expected.rank is not None and (array.ndim != expected.rank or not expected.is_compatible_with(array.shape)):
        raise invalid(f"input {name!r}: shape {list(array.shape)} does not match the signature's "
                      f"{expected.as_list()}")
    return array


def _has_type(value, types) -> bool:
    if isinstance(value, list):
        return any(_has_type(v, types) for v in value)
    return isinstance(value, types)


def parse_predict(body: dict, specs: Dict[str, tf.TensorSpec], max_instances: int) -> Tuple[dict, bool]:
    """A predict request body -> ({input name: array}, row_format).

    Args:
        body: the parsed JSON request.
        specs: the signature's inputs.
        max_instances: largest batch accepted.
    """
    if ("instances" in body) == ("inputs" in body):
        raise invalid("JSON Value: request must hold exactly one of 'instances' (row) or 'inputs' (columnar)")
    names = sorted(specs)
    if "instances" in body:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise invalid("'instances' must be a non-empty list")
        if len(instances) > max_instances:
            raise invalid(f"{len(instances)} instances: at most {max_instances} per request")
        columns = {name: [] for name in names}
        for i, instance in enumerate(instances):
            if len(names) == 1 and not (isinstance(instance, dict) and set(instance) == set(names)):
                instance = {names[0]: instance}  # a bare value for a one-input signature
            if not isinstance(instance, dict) or set(instance) != set(names):
                raise invalid(f"instance {i}: expected an object with exactly the inputs {names}")
            for name in names:
                columns[name].append(instance[name])
        return {name: to_array(columns[name], specs[name], name) for name in names}, True
    inputs = body["inputs"]
    if len(names) == 1 and not (isinstance(inputs, dict) and set(inputs) == set(names)):
        inputs = {names[0]: inputs}
    if not isinstance(inputs, dict) or set(inputs) != set(names):
        raise invalid(f"'inputs' must be an object with exactly the inputs {names}")
    arrays = {name: to_array(inputs[name], specs[name], name) for name in names}
    batch = {a.shape[0] for a in arrays.values() if a.ndim > 0}
    if len(batch) > 1:
        raise invalid(f"inputs have different batch sizes {sorted(batch)}")
    if batch and max(batch) > max_instances:
        raise invalid(f"batch of {max(batch)}: at most {max_instances} per request")
    return arrays, False


def _jsonable(array: np.ndarray, name: str):
    if array.dtype == object:
        def convert(v):
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(v).decode()}
            return v.decode("utf-8", errors="replace")
        return np.vectorize(convert, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def format_predict(outputs: Dict[str, np.ndarray], row_format: bool) -> dict:
    """Signature outputs -> `{"predictions": ...}` (row) or `{"outputs": ...}` (columnar)."""
    names = sorted(outputs)
    columns = {name: _jsonable(np.asarray(outputs[name]), name) for name in names}
    if not row_format:
        return {"outputs": columns[names[0]] if len(names) == 1 else columns}
    if len(names) == 1:
        return {"predictions": columns[names[0]]}
    count = len(columns[names[0]])
    return {"predictions": [{name: columns[name][i] for name in names} for i in range(count)]}


def signature_def_map(version_dir: str) -> dict:
    """{key: SignatureDef proto} of a SavedModel version folder (TF-internal `__*` keys left out)."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, SAVED_MODEL_FILE), "rb") as f:
        saved_model.ParseFromString(f.read())
    meta_graph = saved_model.meta_graphs[0]
    return {key: sig for key, sig in meta_graph.signature_def.items() if not key.startswith("__")}


def signature_defs_json(signature_defs: dict) -> dict:
    """{key: SignatureDef proto} in the JSON shape of TF Serving's REST metadata response."""
    defs = {key: json_format.MessageToDict(sig, preserving_proto_field_name=True)
            for key, sig in signature_defs.items()}
    return {"signature_def": {"signature_def": defs}}


def model_status(version: int) -> dict:
    """TF Serving's GetModelStatus response for one available version."""
    return {"model_version_status": [{"version": str(version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}
