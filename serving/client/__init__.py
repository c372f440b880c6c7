"""The client room: talks to `serving.server` or a stock `tensorflow_model_server` (docs/serving.md).

- `rest_client`: `ServingClient`, TF Serving's REST API (+ `:search`);
- `grpc_client`: `GrpcClient`, TF Serving's gRPC API (+ the `search` signature), same methods;
- `load_test`: closed-loop load over either transport;
- `cli`: `python -m serving.client` (status, metadata, predict, search; embed with a TFLite folder).
"""
