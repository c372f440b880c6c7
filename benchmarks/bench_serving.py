"""Serving throughput and latency: REST vs gRPC vs in-process batched, tokens + audit cost, overload.

    python -m benchmarks.bench_serving [--run RUN_DIR] [--image-size 288 144] [--clients 8]
        [--requests 100] [--overload-seconds 10] [--json OUT]

1. In-process: the exported embedder's `serving_default` on batches of `clients` JPEGs
   (decode + model), images/s.
2. Server (`python -m serving.server`, REST and gRPC in one process, batches of up to
   `clients` images, at most `clients` queued requests): `clients` threads each send
   one-image predict requests back to back (closed loop), over REST, then gRPC, with the
   same images. Images/s, p50/p99 latency.
3. A second server with `--auth-tokens` and `--audit-log`, up beside the first: the
   same REST load on each in `--cost-rounds` alternating rounds; the cost of tokens +
   audit is 1 - the ratio of the medians, judged against the rounds' spread.
4. Overload: requests are sent open-loop at 4x the REST throughput measured in 2 for
   `--overload-seconds`: every answer must be 200 or 429, and the p99 of the accepted ones
   is compared with the p99 at the sustainable rate (2's closed loop) and, for information,
   with one client's alone.

Targets (issue #14): gRPC >= REST, both >= 0.9x in-process; p99/p50 <= 3; tokens+audit
cost <= 3%; under 4x overload only 429s and accepted p99 <= 3x unloaded. Without --run a
random-init KDEM model (non-local blocks) is built and exported to a temp folder.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_model_base(run_dir, image_size, work: str) -> str:
    from serving.export.saved_model import export_embedder
    base = os.path.join(work, "models", "kdem")
    if run_dir:
        export_embedder(run_dir, base)
        return base
    from kdem_tf.config import ModelConfig
    from kdem_tf.model.model import build_kdem_models
    _, model = build_kdem_models(ModelConfig(backbone_weights="none"), 4, tuple(image_size))
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
    from serving.export.embedder import Embedder
    embedder = Embedder(base)
    chunk = (images * (batch // len(images) + 1))[:batch]
    embedder.embed_bytes(chunk, ["visible"] * batch)  # warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embedder.embed_bytes(chunk, ["visible"] * batch)
        done += batch
    return done / (time.perf_counter() - start)


def start_server(args: list, work: str, name: str) -> tuple:
    """Starts serving.server on free ports (bound by the server, read from its ready file)."""
    ready = os.path.join(work, f"{name}.ready.json")
    log_path = os.path.join(work, f"{name}.log")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "serving.server", "--port", "0", "--grpc-port", "auto",
                                    "--ready-file", ready] + args, cwd=REPO, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not os.path.exists(ready):
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise RuntimeError(open(log_path).read()[-3000:])
        time.sleep(0.2)
    with open(ready) as f:
        ports = json.load(f)
    return process, f"http://127.0.0.1:{ports['rest_port']}", f"127.0.0.1:{ports['grpc_port']}"


def stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def closed_loop(url, images, clients, requests, grpc_target=None, token=None) -> dict:
    from serving.client.load_test import load_test
    load_test(url, images, clients=clients, requests_per_client=2, grpc_target=grpc_target, token=token)  # warm
    report = load_test(url, images, clients=clients, requests_per_client=requests, grpc_target=grpc_target,
                       token=token)
    return {"images_per_second": round(report["requests_per_s"], 2), "p50_ms": round(report["p50_ms"], 1),
            "p99_ms": round(report["p99_ms"], 1), "p99_over_p50": round(report["p99_ms"] / report["p50_ms"], 2),
            "requests": report["requests"], "errors": len(report["errors"]), "error_samples": report["errors"][:3]}


def open_loop(url: str, images: list, rate: float, seconds: float, workers: int = 64) -> dict:
    """One-image predicts sent at `rate` per second for `seconds` (open loop): codes and latencies."""
    import requests

    from serving.client.rest_client import b64
    bodies = [{"instances": [{"image_bytes": b64(i), "modality": "visible"}]} for i in images]
    sessions = {}

    def call(i: int):
        session = sessions.setdefault(i % workers, requests.Session())
        start = time.perf_counter()
        try:
            response = session.post(url + "/v1/models/kdem:predict", json=bodies[i % len(bodies)], timeout=60)
            return response.status_code, time.perf_counter() - start
        except requests.RequestException as e:
            return type(e).__name__, time.perf_counter() - start

    count = int(rate * seconds)
    futures = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(call, i))
        results = [f.result() for f in futures]
    codes = {}
    for code, _ in results:
        codes[str(code)] = codes.get(str(code), 0) + 1
    accepted = np.array([lat for code, lat in results if code == 200]) * 1000
    return {"rate": round(rate, 1), "sent": count, "codes": codes,
            "accepted_p50_ms": round(float(np.percentile(accepted, 50)), 1) if len(accepted) else None,
            "accepted_p99_ms": round(float(np.percentile(accepted, 99)), 1) if len(accepted) else None}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="training run folder (default: random-init model)")
    parser.add_argument("--image-size", type=int, nargs=2, default=[288, 144])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=100, help="requests per client")
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    parser.add_argument("--cost-rounds", type=int, default=3, help="alternating plain/secured rounds")
    parser.add_argument("--cost-requests", type=int, default=15, help="requests per client per round")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from benchmarks.common import combined_spread, machine_info, spread, target_verdict, verdict_line

    work = tempfile.mkdtemp(prefix="bench_serving_")
    processes = []
    try:
        base = make_model_base(args.run, args.image_size, work)
        with open(os.path.join(base, "1", "assets.extra", "kdem_info.json")) as f:
            image_size = json.load(f)["image_size"]
        images = make_images(image_size)
        batched = in_process(base, images, args.clients)
        print(f"in-process embedder ({image_size[0]}x{image_size[1]}): {batched:.1f} images/s at batch "
              f"{args.clients}", flush=True)
        limits = ["--max-batch", str(args.clients), "--max-queue", str(args.clients)]
        process, url, target = start_server(["--model-base", base] + limits, work, "plain")
        processes.append(process)
        rest = closed_loop(url, images, args.clients, args.requests)
        over_grpc = closed_loop(url, images, args.clients, args.requests, grpc_target=target)
        for name, r in (("REST", rest), ("gRPC", over_grpc)):
            print(f"{name}, {args.clients} clients x {args.requests} one-image requests: "
                  f"{r['images_per_second']:.1f} images/s ({r['images_per_second'] / batched:.2f}x in-process), "
                  f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms (p99/p50 {r['p99_over_p50']:.2f}), "
                  f"errors {r['errors']}", flush=True)
        unloaded = closed_loop(url, images, 1, max(20, args.requests // 2))
        overload = open_loop(url, images, 4 * rest["images_per_second"], args.overload_seconds)
        # The reference is the p99 at the sustainable rate (the closed-loop REST load above: full
        # batches, no queue beyond them): an accepted request under overload waits for full batches
        # too, so a single client's one-image calls (also printed) are no bound for it on a CPU,
        # where a batch of B costs about B single calls.
        ratio = overload["accepted_p99_ms"] / rest["p99_ms"] if overload["accepted_p99_ms"] else None
        single = overload["accepted_p99_ms"] / unloaded["p99_ms"] if overload["accepted_p99_ms"] else None
        print(f"overload at 4x ({overload['rate']} req/s for {args.overload_seconds:.0f} s): codes "
              f"{overload['codes']}, accepted p99 {overload['accepted_p99_ms']} ms vs {rest['p99_ms']} ms at the "
              f"sustainable rate ({ratio and round(ratio, 2)}x) and {unloaded['p99_ms']} ms for one client alone "
              f"({single and round(single, 2)}x)", flush=True)
        tokens = os.path.join(work, "tokens.txt")
        with open(tokens, "w") as f:
            f.write("bench:tok-bench-0123456789abcdef\n")
        secured_process, secured_url, _ = start_server(["--model-base", base, "--auth-tokens", tokens, "--audit-log",
                                                        os.path.join(work, "audit.jsonl")] + limits, work, "secured")
        processes.append(secured_process)
        # Plain and secured servers side by side, measured in alternation: the cost is the ratio of the
        # medians, judged against the rounds' spread (benchmarks.common).
        plain_rounds, secured_rounds = [], []
        for _ in range(args.cost_rounds):
            plain_rounds.append(closed_loop(url, images, args.clients, args.cost_requests)["images_per_second"])
            secured_rounds.append(closed_loop(secured_url, images, args.clients, args.cost_requests,
                                              token="tok-bench-0123456789abcdef")["images_per_second"])
        plain_figure, secured_figure = spread(plain_rounds), spread(secured_rounds)
        cost = 1 - secured_figure["median"] / plain_figure["median"]
        cost_verdict = target_verdict(secured_figure["median"] / plain_figure["median"], 0.97,
                                      combined_spread(plain_figure, secured_figure))
        secured = {"images_per_second": secured_figure["median"], "rounds": secured_rounds,
                   "plain_rounds": plain_rounds, "verdict": cost_verdict}
        print(f"REST with tokens + audit log: median {secured_figure['median']:.1f} images/s vs "
              f"{plain_figure['median']:.1f} without, {args.cost_rounds} alternating rounds (cost "
              f"{100 * cost:.1f}% of throughput; " + verdict_line("secured / plain", cost_verdict) + ")", flush=True)
        results = {"machine": machine_info(), "load_average": os.getloadavg(), "image_size": list(image_size),
                   "clients": args.clients, "requests_per_client": args.requests,
                   "in_process_images_per_second": round(batched, 2), "rest": rest, "grpc": over_grpc,
                   "grpc_over_rest": round(over_grpc["images_per_second"] / rest["images_per_second"], 3),
                   "rest_over_in_process": round(rest["images_per_second"] / batched, 3),
                   "grpc_over_in_process": round(over_grpc["images_per_second"] / batched, 3),
                   "secured_rest": secured, "tokens_audit_cost": round(cost, 4), "unloaded": unloaded,
                   "overload": overload, "overload_p99_over_sustainable_p99": ratio and round(ratio, 3),
                   "overload_p99_over_single_client_p99": single and round(single, 3)}
        # The flat keys benchmarks/run_all.py reads (REST figures), as before.
        results.update(server_images_per_second=rest["images_per_second"], requests=rest["requests"],
                       requests_per_second=rest["images_per_second"], p50_ms=rest["p50_ms"], p99_ms=rest["p99_ms"],
                       p99_over_p50=rest["p99_over_p50"], errors=rest["errors"],
                       server_over_in_process=results["rest_over_in_process"],
                       in_process_images_per_second_batch_32=None)
        print(json.dumps({k: results[k] for k in ("grpc_over_rest", "rest_over_in_process", "grpc_over_in_process",
                                                   "tokens_audit_cost", "overload_p99_over_sustainable_p99",
                                                   "load_average")}))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
