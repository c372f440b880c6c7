"""Python client for TF Serving's REST API (+ our `:search`): `ServingClient`.

`status`, `metadata` and `predict` speak TF Serving's REST API only, so they work against a stock
`tensorflow_model_server` serving the embedder (REST 8501); `search` needs `serving.server --index`.
The command line over it: `python -m serving.client` (serving/client/cli.py).
"""
from __future__ import annotations

import base64
from typing import List, Optional, Sequence

import numpy as np
import requests


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
