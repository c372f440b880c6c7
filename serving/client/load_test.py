"""Closed-loop load over REST or gRPC: `load_test` (benchmarks/bench_serving.py and the server tests)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import requests

from kdem_tf.image_contract import VISIBLE
from serving.client.grpc_client import GrpcClient, GrpcClientError
from serving.client.rest_client import ServingClient, ServingClientError


def load_test(url: str, images: Sequence[bytes], modality: str = VISIBLE, clients: int = 8,
              requests_per_client: int = 25, model: str = "kdem", grpc_target: Optional[str] = None,
              token: Optional[str] = None, keep_outputs: bool = False) -> dict:
    """Closed-loop load: `clients` threads each send one-image predict requests back to back.

    Args:
        url: REST server root (ignored when `grpc_target` is given).
        grpc_target: HOST:PORT to load over gRPC instead.
        keep_outputs: also return every answer as (image position in `images`, embedding).

    Returns:
        {"requests", "errors", "seconds", "requests_per_s", "p50_ms", "p99_ms", "latencies_ms"}
        (+ "outputs" with keep_outputs).
    """
    import concurrent.futures
    import time


    def worker(worker_id: int):
        client = (GrpcClient(grpc_target, model, token=token) if grpc_target
                  else ServingClient(url, model, token=token))
        latencies, errors, outputs = [], [], []
        for i in range(requests_per_client):
            position = (worker_id * requests_per_client + i) % len(images)
            start = time.perf_counter()
            try:
                embedding = client.predict([images[position]], [modality])
                latencies.append(time.perf_counter() - start)
                if keep_outputs:
                    outputs.append((position, embedding[0]))
            except (ServingClientError, GrpcClientError, requests.RequestException) as e:
                errors.append(str(e))
        return latencies, errors, outputs

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(worker, range(clients)))
    seconds = time.perf_counter() - start
    latencies = np.array([x for lat, _, _ in results for x in lat]) * 1000.0
    errors = [e for _, errs, _ in results for e in errs]
    done = len(latencies)
    report = {"requests": done + len(errors), "errors": errors, "seconds": seconds,
              "requests_per_s": done / seconds, "p50_ms": float(np.percentile(latencies, 50)) if done else None,
              "p99_ms": float(np.percentile(latencies, 99)) if done else None, "latencies_ms": latencies}
    if keep_outputs:
        report["outputs"] = [o for _, _, outs in results for o in outs]
    return report
