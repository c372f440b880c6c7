"""REST server throughput vs the embedder's own batched throughput, on this machine.

    python -m benchmarks.bench_serving [--run RUN_DIR] [--clients 8] [--requests 200] [--json OUT]

1. In-process: the exported embedder's `serving_default` on batches of encoded JPEGs
   (decode + model), images/s at batch = clients and at batch 32.
2. Server: `python -m serving.server` in a subprocess; `clients` threads each send
   one-image predict requests back to back (closed loop). Images/s, p50/p99 latency.

Prints both figures and their ratio (targets: server >= 80% of in-process at batch =
clients, p99 <= 3x p50). Without --run, a random-init KDEM model (288x144, non-local
blocks: the paper's network) is built and exported to a temp folder.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model_base(run_dir, image_size, work: str) -> str:
    from serving.export import export_embedder
    base = os.path.join(work, "models", "kdem")
    if run_dir:
        export_embedder(run_dir, base)
        return base
    from kdem_tf.model.model import build_kdem_models
    _, model = build_kdem_models(num_classes=4, image_size=tuple(image_size))
    export_embedder(model, base)
    return base


def make_images(image_size, count: int = 32) -> list:
    from PIL import Image
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (image_size[0], image_size[1], 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def in_process(base: str, images: list, batch: int, seconds: float = 10.0) -> float:
    """Images/s of `serving_default` called in batches of `batch`, for about `seconds`."""
    from serving.embedder import Embedder
    embedder = Embedder(base)
    chunk = (images * (batch // len(images) + 1))[:batch]
    embedder.embed_bytes(chunk, ["visible"] * batch)  # warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embedder.embed_bytes(chunk, ["visible"] * batch)
        done += batch
    return done / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base: str, port: int, log_path: str) -> subprocess.Popen:
    import requests
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "serving.server", "--model-base", base, "--port", str(port)],
                                   cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(open(log_path).read()[-3000:])
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except requests.RequestException:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("server did not start")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="training run folder (default: random-init model)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[288, 144])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from serving.client import load_test

    work = tempfile.mkdtemp(prefix="bench_serving_")
    process = None
    try:
        base = make_model_base(args.run, args.image_size, work)
        with open(os.path.join(base, "1", "assets.extra", "kdem_info.json")) as f:
            image_size = json.load(f)["image_size"]
        images = make_images(image_size)
        batched = in_process(base, images, args.clients)
        batched_32 = in_process(base, images, 32)
        print(f"in-process embedder ({image_size[0]}x{image_size[1]}): {batched:.1f} images/s at batch "
              f"{args.clients}, {batched_32:.1f} images/s at batch 32", flush=True)
        port = args.port or free_port()
        process = start_server(base, port, os.path.join(work, "server.log"))
        url = f"http://127.0.0.1:{port}"
        load_test(url, images, clients=args.clients, requests_per_client=3)  # warm up
        report = load_test(url, images, clients=args.clients, requests_per_client=args.requests)
        served = report["requests_per_s"]
        print(f"server, {args.clients} clients x {args.requests} one-image requests: {served:.1f} images/s, "
              f"p50 {report['p50_ms']:.0f} ms, p99 {report['p99_ms']:.0f} ms (p99/p50 "
              f"{report['p99_ms'] / report['p50_ms']:.2f}), errors {len(report['errors'])}")
        print(f"ratio server / in-process: {served / batched:.2f} (batch {args.clients}), "
              f"{served / batched_32:.2f} (batch 32)")
        if args.json:
            from benchmarks.common import machine_info
            p50, p99 = report["p50_ms"], report["p99_ms"]
            results = {"machine": machine_info(), "image_size": list(image_size), "clients": args.clients,
                       "requests_per_client": args.requests,
                       "in_process_images_per_second": round(batched, 2),
                       "in_process_images_per_second_batch_32": round(batched_32, 2),
                       "server_images_per_second": round(served, 2), "requests": report["requests"],
                       "requests_per_second": round(served, 2), "seconds": round(report["seconds"], 2),
                       "p50_ms": p50, "p99_ms": p99,
                       "p99_over_p50": round(p99 / p50, 3) if p50 else None,
                       "errors": len(report["errors"]), "error_samples": report["errors"][:5],
                       "server_over_in_process": round(served / batched, 3),
                       "server_over_in_process_batch_32": round(served / batched_32, 3)}
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
