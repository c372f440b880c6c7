"""TF Serving's gRPC API over a `ServingCore`: PredictionService and ModelService.

Implements, with the official `tensorflow_serving.apis` stubs, on the same loaded models,
versions and micro-batcher as the REST API of the same process:

- `tensorflow.serving.PredictionService/Predict`: every signature of the served models
  (and `search` on the embedder: see serving.export.search_signature), `model_spec.version` or
  `model_spec.version_label` or the latest version, `output_filter`;
- `tensorflow.serving.PredictionService/GetModelMetadata`: `signature_def` packed as
  `SignatureDefMap`, as TF Serving returns it;
- `tensorflow.serving.ModelService/GetModelStatus`.

Status codes as TF Serving's: INVALID_ARGUMENT (bad inputs), NOT_FOUND (unknown model,
version or signature), FAILED_PRECONDITION (no version loaded, no index for search),
RESOURCE_EXHAUSTED (queue full), UNAUTHENTICATED (missing/wrong `authorization`
metadata). Classify, Regress and MultiInference stay UNIMPLEMENTED (the stubs' default).
A call cancelled by its client, or still queued when its deadline passes, is dropped
before it is computed (DEADLINE_EXCEEDED).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc, status_pb2)

from kdem_tf.artifacts import SEARCH_SIGNATURE, SERVING_SIGNATURE
from serving.server.core import ServingCore, check_inputs
from serving.server.errors import ServingError, invalid, new_request_id
from serving.server.limits import deadline_seconds, grpc_server_kwargs, within_deadline
from serving.server.request_checks import excerpt, tensor_arrays

log = logging.getLogger("serving")
METADATA_FIELD = "signature_def"


def _version_of(spec) -> Optional[int]:
    return spec.version.value if spec.HasField("version") else None


def _label_of(spec) -> Optional[str]:
    if spec.HasField("version") and spec.version_label:
        raise invalid("model_spec: give version or version_label, not both")
    return spec.version_label or None


class _Base:
    def __init__(self, core: ServingCore, auth, audit):
        self.core = core
        self.auth = auth
        self.audit = audit

    async def principal(self, context, method: str) -> str:
        authorization = dict(context.invocation_metadata() or ()).get("authorization")
        try:
            return self.auth.check(authorization)
        except ServingError as e:  # refused calls are audited too (401 / 403)
            self.audit.record(transport="grpc", client=context.peer(), method=method, status=e.code,
                              token_name=getattr(e, "token_name", None))
            await self.abort(context, e)

    @staticmethod
    async def abort(context, error: ServingError):
        await context.abort(getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL), error.message)


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict and GetModelMetadata."""

    async def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        who = await self.principal(context, "Predict")
        spec = request.model_spec
        signature = spec.signature_name or SERVING_SIGNATURE
        start, entry, status = time.perf_counter(), {"model": spec.name, "signature": signature}, "OK"
        try:
            loaded = self.core.resolve(spec.name, _version_of(spec), _label_of(spec), signature)
            entry["version"] = loaded.version
            specs = self.core.input_specs(loaded, signature)  # declared sizes checked before any expansion
            inputs = check_inputs(tensor_arrays(request.inputs, specs, self.core.limits.max_instances), specs)
            entry["instances"] = max((len(a) for a in inputs.values() if a.ndim > 0), default=1)
            wanted = list(request.output_filter)
            budget = deadline_seconds(self.core.limits, context.time_remaining())
            deadline = asyncio.get_running_loop().time() + budget
            outputs = await within_deadline(self.core.predict(loaded, signature, inputs, deadline), budget)
            unknown = sorted(set(wanted) - set(outputs))
            if unknown:
                raise invalid(f"output tensor alias not found in signature: {excerpt(unknown[0])}")
            if signature == SEARCH_SIGNATURE:
                entry.update(k=int(inputs["k"]), gallery_ids=outputs["gallery_ids"].tolist(),
                             person_ids=outputs["person_ids"].tolist())
            response = predict_pb2.PredictResponse()
            response.model_spec.name = spec.name
            response.model_spec.version.value = loaded.version
            response.model_spec.signature_name = signature
            for name in wanted or sorted(outputs):
                response.outputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(outputs[name])))
            return response
        except ServingError as e:
            status = e.code
            await self.abort(context, e)
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception as error:  # noqa: BLE001  an internal failure: INTERNAL with a request id
            status = "INTERNAL"
            request_id = new_request_id()
            log.error("internal error, request %s (gRPC Predict)", request_id, exc_info=error)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")
        finally:
            self.audit.record(transport="grpc", token_name=who, client=context.peer(), status=status,
                              latency_ms=round((time.perf_counter() - start) * 1000, 3), **entry)

    async def GetModelMetadata(self, request, context) -> get_model_metadata_pb2.GetModelMetadataResponse:
        await self.principal(context, "GetModelMetadata")
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for field in fields:
                if field != METADATA_FIELD:
                    raise invalid(f"Metadata field {excerpt(field)} is not supported")
            spec = request.model_spec
            loaded = self.core.resolve(spec.name, _version_of(spec), _label_of(spec))
        except ServingError as e:
            await self.abort(context, e)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in sorted(self.core.signature_defs(loaded).items()):
            signature_map.signature_def[key].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = loaded.version
        response.metadata[METADATA_FIELD].Pack(signature_map)
        return response


class ModelService(_Base, model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus (HandleReloadConfigRequest stays UNIMPLEMENTED: models come from base paths)."""

    async def GetModelStatus(self, request, context) -> get_model_status_pb2.GetModelStatusResponse:
        await self.principal(context, "GetModelStatus")
        try:
            spec = request.model_spec
            loaded = self.core.resolve(spec.name, _version_of(spec), _label_of(spec))
        except ServingError as e:
            await self.abort(context, e)
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=loaded.version,
                                          state=get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                                          status=status_pb2.StatusProto(error_code=0, error_message=""))
        return response


async def start_grpc_server(core: ServingCore, auth, audit, host: str, port: int,
                            tls: Optional[tuple] = None) -> tuple:
    """Starts the gRPC server on the running event loop.

    Args:
        core, auth, audit: as for serving.server.rest_app.create_app.
        host, port: bind address; port 0 picks a free port.
        tls: (certificate PEM bytes, private key PEM bytes), or None for plaintext.

    Returns:
        (server, bound port).
    """
    limit = core.limits.max_body_bytes
    connection = grpc_server_kwargs(core.limits)  # concurrent RPCs, idle connections (serving.server.limits)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0),  # a port in use is an error, not shared
                                      ("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)] + connection["options"],
                             maximum_concurrent_rpcs=connection["maximum_concurrent_rpcs"])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(core, auth, audit), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(core, auth, audit), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls:
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
    else:
        bound = server.add_insecure_port(address)
    if not bound:
        raise OSError(f"gRPC: cannot bind {address}")
    await server.start()
    return server, bound
