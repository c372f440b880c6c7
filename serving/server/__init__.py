"""The server room: TF Serving's REST and gRPC APIs plus gallery search, in one process
(`python -m serving.server`, CLI in `cli`; see docs/serving.md).

- `core`: what both transports share (models, versions, index, micro-batcher);
- `rest`, `rest_app`: TF Serving's REST JSON format, and the FastAPI app over `core`;
- `grpc_service`: TF Serving's gRPC PredictionService and ModelService over `core`;
- `versions`: the loaded versions of each served model, swapped in when a new one appears;
- `batching`: the asyncio micro-batcher; `settings`: the server's limits;
- `auth`: bearer tokens; `audit`: the audit log; `errors`: errors with TF status codes.
"""
