"""Serving errors with TF status codes, mapped to HTTP (REST) and gRPC statuses; no TensorFlow import."""
from __future__ import annotations

from typing import Optional

# TF Serving's mapping of TF status codes to HTTP statuses (http_rest_api_handler).
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "NOT_FOUND": 404,
               "UNAUTHENTICATED": 401, "RESOURCE_EXHAUSTED": 429, "UNIMPLEMENTED": 501, "INTERNAL": 500,
               "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504}


class ServingError(Exception):
    """An error with a TF status `code` (e.g. "INVALID_ARGUMENT"), returned as `{"error": message}`.

    `status` is its HTTP status (TF Serving's mapping, or `http_status` when given, e.g. 413);
    serving.server.grpc_service maps `code` to the gRPC status of the same name.
    """

    def __init__(self, code: str, message: str, http_status: Optional[int] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.code = code
        self.status = http_status or HTTP_STATUS.get(code, 500)
        self.message = message
        self.headers = headers or {}


def invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def failed_precondition(message: str) -> ServingError:
    return ServingError("FAILED_PRECONDITION", message)


def exhausted(message: str, retry_after_s: int = 1) -> ServingError:
    return ServingError("RESOURCE_EXHAUSTED", message, headers={"Retry-After": str(retry_after_s)})


def unauthenticated(message: str) -> ServingError:
    return ServingError("UNAUTHENTICATED", message, headers={"WWW-Authenticate": "Bearer"})


def deadline_exceeded(message: str) -> ServingError:
    return ServingError("DEADLINE_EXCEEDED", message)
