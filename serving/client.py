"""Python client and CLI for the TF Serving REST API (+ our `:search`).

    python -m serving.client status  --url http://127.0.0.1:8501 [--model kdem]
    python -m serving.client predict --image a.jpg [--image b.jpg] --modality visible --url ...
    python -m serving.client search  --image q.jpg --modality infrared --k 10 --url ...
    python -m serving.client predict --grpc 127.0.0.1:8500 --image a.jpg ...      # gRPC instead of REST

    --token TOKEN | --token-file FILE   bearer token (a file holding just the token)
    --ca-cert PEM                       trust this CA (or self-signed certificate): https / TLS gRPC

`status`, `metadata` and `predict` speak TF Serving's REST or gRPC API only, so they work
against a stock `tensorflow_model_server` serving the embedder (REST 8501, gRPC 8500);
`search` needs `serving.server --index` (REST `:search`, gRPC the `search` signature).
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import List, Optional, Sequence

import numpy as np
import requests

from kdem_tf.image_contract import INFRARED, MODALITIES, VISIBLE


class ServingClientError(RuntimeError):
    """The server answered with an error: `status` (HTTP) and its `{"error": ...}` message."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def b64(data: bytes) -> dict:
    """Binary value in TF Serving's JSON encoding."""
    return {"b64": base64.b64encode(data).decode("ascii")}


class ServingClient:
    """Talks to `serving.server` or `tensorflow_model_server` over REST.

    Args:
        url: server root, e.g. http://127.0.0.1:8501.
        model: model name.
        version: pin a version (default: the one served).
        timeout: seconds per request.
    """

    def __init__(self, url: str = "http://127.0.0.1:8501", model: str = "kdem", version: Optional[int] = None,
                 timeout: float = 60.0, token: Optional[str] = None, ca_cert: Optional[str] = None):
        self.url = url.rstrip("/")
        self.model = model
        self.version = version
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.verify = ca_cert or True  # per request: REQUESTS_CA_BUNDLE would override a session setting

    def _path(self, suffix: str = "") -> str:
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.url}/v1/models/{self.model}{version}{suffix}"

    def _call(self, method: str, url: str, body: Optional[dict] = None) -> dict:
        response = self.session.request(method, url, json=body, timeout=self.timeout, verify=self.verify)
        try:
            payload = response.json()
        except ValueError:
            payload = {"error": response.text}
        if response.status_code != 200:
            raise ServingClientError(response.status_code, payload.get("error", response.text))
        return payload

    def status(self) -> dict:
        """GET /v1/models/{model}: {"model_version_status": [...]}."""
        return self._call("GET", self._path())

    def metadata(self) -> dict:
        """GET /v1/models/{model}/metadata: the signature defs."""
        return self._call("GET", self._path("/metadata"))

    def predict(self, images: Sequence[bytes], modalities: Sequence[str], columnar: bool = False) -> np.ndarray:
        """Embeds encoded images with the `serving_default` signature -> float32 [N, D].

        Args:
            images: JPEG/PNG/BMP bytes.
            modalities: "visible" or "infrared", one per image.
            columnar: send `inputs` instead of `instances`.
        """
        if columnar:
            body = {"inputs": {"image_bytes": [b64(i) for i in images], "modality": list(modalities)}}
            return np.asarray(self._call("POST", self._path(":predict"), body)["outputs"], np.float32)
        body = {"instances": [{"image_bytes": b64(i), "modality": m} for i, m in zip(images, modalities)]}
        return np.asarray(self._call("POST", self._path(":predict"), body)["predictions"], np.float32)

    def predict_raw(self, body: dict) -> dict:
        """POST any TF Serving predict body as is."""
        return self._call("POST", self._path(":predict"), body)

    def search(self, images: Sequence[bytes], modalities: Sequence[str], k: int = 10) -> List[List[dict]]:
        """Ranked gallery matches per query image (needs `serving.server --index`)."""
        body = [{"image": b64(i), "modality": m, "k": k} for i, m in zip(images, modalities)]
        return self._call("POST", f"{self.url}/v1/models/{self.model}:search", body)["results"]


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

    from serving.grpc_client import GrpcClient, GrpcClientError

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


def _token(args) -> Optional[str]:
    if args.token_file:
        with open(args.token_file) as f:
            return f.read().strip()
    return args.token


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Client for the kdem REST server / TF Serving.")
    parser.add_argument("command", choices=("status", "metadata", "predict", "search", "embed"))
    parser.add_argument("--tflite", metavar="OUT_DIR", help="embed: run this TFLite folder locally (no server)")
    parser.add_argument("--url", default="http://127.0.0.1:8501")
    parser.add_argument("--model", default="kdem")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    parser.add_argument("--modality", default=INFRARED, choices=MODALITIES)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--grpc", default=None, metavar="HOST:PORT", help="use TF Serving's gRPC API there")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", default=None, help="bearer token")
    auth.add_argument("--token-file", default=None, help="file holding the bearer token")
    parser.add_argument("--ca-cert", default=None, help="CA / self-signed certificate to trust (TLS)")
    args = parser.parse_args(argv)
    if args.command == "embed":
        if not args.tflite or not args.image:
            parser.error("embed needs --tflite OUT_DIR and at least one --image")
        from serving.tflite_export import embed_cli
        sys.exit(embed_cli(args.tflite, args.image, args.modality))
    from serving.grpc_client import GrpcClient, GrpcClientError
    if args.grpc:
        client = GrpcClient(args.grpc, args.model, args.version, token=_token(args), ca_cert=args.ca_cert)
    else:
        client = ServingClient(args.url, args.model, args.version, token=_token(args), ca_cert=args.ca_cert)
    images = []
    for path in args.image:
        with open(path, "rb") as f:
            images.append(f.read())
    if args.command in ("predict", "search") and not images:
        parser.error(f"{args.command} needs at least one --image")
    try:
        if args.command == "status":
            print(json.dumps(client.status(), indent=2))
        elif args.command == "metadata":
            print(json.dumps(client.metadata(), indent=2))
        elif args.command == "predict":
            embeddings = client.predict(images, [args.modality] * len(images))
            for path, embedding in zip(args.image, embeddings):
                print(f"{path}: dim {len(embedding)}, norm {np.linalg.norm(embedding):.4f}, "
                      f"first {np.round(embedding[:4], 4).tolist()}")
        else:
            for path, results in zip(args.image, client.search(images, [args.modality] * len(images), args.k)):
                print(f"{path}:")
                for r in results:
                    print(f"  {r['rank']:3d}. id {r['person_id']:5d}  cam {r['camera']:2d}  "
                          f"score {r['score']:.4f}  {r['path']}")
    except (ServingClientError, GrpcClientError, requests.RequestException) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
