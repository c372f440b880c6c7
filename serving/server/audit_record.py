"""One audit record as one bounded line of strict JSON, whatever the client sent.

Clients control some fields (a signature name, a path, k, a model name), so every value is
bounded before it is written:

- a string longer than MAX_STRING_CHARS is cut there and `<field>_length` records its
  original length (in characters);
- a list (or tuple) keeps its first MAX_LIST_ITEMS items at every level and
  `<field>_count` records the original length of the outer one;
- a float that is not finite (NaN, Infinity) is written as the string "NaN", "Infinity" or
  "-Infinity" (JSON has no such numbers); an integer beyond 64 bits as the string
  "<integer of N bits>";
- a dict keeps MAX_LIST_ITEMS keys, each a bounded string; anything nested deeper than
  MAX_DEPTH or of another type becomes its bounded `repr`;
- when the line still exceeds MAX_LINE_BYTES, its largest fields are left out (value
  null) with `<field>_omitted_bytes` recording their encoded size, largest first.

The line is `json.dumps(..., allow_nan=False)`: a strict JSON parser reads every line.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict

MAX_STRING_CHARS = 256
MAX_LIST_ITEMS = 100
MAX_DEPTH = 3
MAX_LINE_BYTES = 16_000  # under 16 KiB, newline included
INT64_MAX = (1 << 63) - 1
_NONFINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def bounded_string(text: str) -> str:
    return text if len(text) <= MAX_STRING_CHARS else text[:MAX_STRING_CHARS]


def bounded_value(value: Any, depth: int = 0) -> Any:
    """`value` as JSON-safe data within the bounds above (no length fields: see bounded_fields)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= INT64_MAX else f"<integer of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else _NONFINITE.get(value, "NaN")
    if isinstance(value, str):
        return bounded_string(value)
    if depth < MAX_DEPTH and isinstance(value, (list, tuple)):
        return [bounded_value(item, depth + 1) for item in value[:MAX_LIST_ITEMS]]
    if depth < MAX_DEPTH and isinstance(value, dict):
        items = list(value.items())[:MAX_LIST_ITEMS]
        return {bounded_string(str(key)): bounded_value(item, depth + 1) for key, item in items}
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar
        return bounded_value(value.item(), depth)
    return bounded_string(repr(value))


def bounded_fields(fields: Dict[str, Any]) -> Dict[str, Any]:
    """Every field bounded, with `<field>_length` / `<field>_count` where something was cut."""
    out: Dict[str, Any] = {}
    for key, value in fields.items():
        key = bounded_string(str(key))
        out[key] = bounded_value(value)
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            out[f"{key}_length"] = len(value)
        elif isinstance(value, (list, tuple, dict)) and len(value) > MAX_LIST_ITEMS:
            out[f"{key}_count"] = len(value)
    return out


def dumps(fields: Dict[str, Any]) -> str:
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


def audit_line(fields: Dict[str, Any]) -> str:
    """The record's line (newline included): strict JSON, at most MAX_LINE_BYTES bytes."""
    record = bounded_fields(fields)
    line = dumps(record)
    if len(line) + 1 > MAX_LINE_BYTES:
        sizes = sorted(((len(dumps(value)), key) for key, value in record.items()), reverse=True)
        for size, key in sizes:
            record[key], record[f"{key}_omitted_bytes"] = None, size
            line = dumps(record)
            if len(line) + 1 <= MAX_LINE_BYTES:
                break
    return line + "\n"
