"""ScaNN vs exact search on clustered 2048-d embeddings: recall@10 and queries/s.

    python -m benchmarks.bench_scann [--sizes 10000 100000 200000] [--queries 500] [--json OUT]

Galleries have identity structure like a re-id gallery: n/10 identities, each a
random unit centre; a sample is centre + Gaussian noise of norm 0.75, L2-normalised
(cosine 0.8 to its centre, ~0.64 between two samples of one identity, ~0 across). Queries are held-out samples of those identities.
Exact search is done well: one batched matrix product + top-k in TensorFlow (all
cores). ScaNN uses `serving.index.auto_params(n)` (what `serving.index` builds) and
its multi-threaded batched search. Prints figures; asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def clustered(num_items: int, num_queries: int, dim: int = 2048, per_identity: int = 10, noise: float = 0.75,
              seed: int = 0):
    """(gallery float32 [n, dim], queries float32 [q, dim]), unit norm, identity-clustered."""
    rng = np.random.default_rng(seed)
    identities = max(1, num_items // per_identity)
    centres = rng.standard_normal((identities, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise_scale = np.float32(noise / np.sqrt(dim))

    def samples(owner):
        out = centres[owner]
        out += rng.standard_normal(out.shape, dtype=np.float32) * noise_scale
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    gallery = np.empty((num_items, dim), np.float32)
    for start in range(0, num_items, 20_000):  # in chunks: bounded temporary memory
        stop = min(start + 20_000, num_items)
        gallery[start:stop] = samples(np.arange(start, stop) % identities)
    queries = samples(rng.integers(0, identities, num_queries))
    return gallery, queries


def exact_search(gallery, queries, k: int = 10, batch: int = 128):
    """TF batched matmul + top-k -> (indices [q, k], queries/s)."""
    import tensorflow as tf
    database = tf.constant(gallery)

    @tf.function(input_signature=[tf.TensorSpec([None, gallery.shape[1]], tf.float32)])
    def search(q):
        return tf.math.top_k(tf.matmul(q, database, transpose_b=True), k=k).indices

    search(queries[:batch])  # trace + warm up
    start = time.perf_counter()
    indices = np.concatenate([search(queries[i:i + batch]).numpy() for i in range(0, len(queries), batch)])
    return indices, len(queries) / (time.perf_counter() - start)


def scann_search(gallery, queries, k: int = 10):
    """ScaNN with auto parameters -> (indices, queries/s, build seconds, params)."""
    from serving.export.gallery_index import auto_params, build_searcher
    params = auto_params(len(gallery))
    start = time.perf_counter()
    searcher = build_searcher(gallery, params, k=k)
    build_seconds = time.perf_counter() - start
    pre = max(params.get("reorder", k), k) if params["mode"] == "tree_ah" else None
    searcher.search_batched_parallel(queries[:100], final_num_neighbors=k, pre_reorder_num_neighbors=pre)
    start = time.perf_counter()
    indices, _ = searcher.search_batched_parallel(queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre)
    return np.asarray(indices), len(queries) / (time.perf_counter() - start), build_seconds, params


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 200_000])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--noise", type=float, default=0.75, help="noise norm relative to the unit centre")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    rows = []
    print(f"{'gallery':>8} {'mode':>11} {'build s':>8} {'exact q/s':>10} {'scann q/s':>10} {'speed-up':>9} "
          f"{'recall@10':>10}  params")
    for size in args.sizes:
        gallery, queries = clustered(size, args.queries, args.dim, noise=args.noise)
        truth, exact_qps = exact_search(gallery, queries)
        found, scann_qps, build_seconds, params = scann_search(gallery, queries)
        print(f"{size:>8} {params['mode']:>11} {build_seconds:>8.1f} {exact_qps:>10.0f} {scann_qps:>10.0f} "
              f"{scann_qps / exact_qps:>8.1f}x {recall_at(found, truth):>10.3f}  "
              f"{ {k: v for k, v in params.items() if k != 'mode'} }", flush=True)
        rows.append({"gallery": size, "dim": args.dim, "queries": args.queries, "mode": params["mode"],
                     "build_seconds": round(build_seconds, 2), "exact_qps": round(exact_qps, 1),
                     "scann_qps": round(scann_qps, 1), "speedup": round(scann_qps / exact_qps, 2),
                     "recall_at_10": round(recall_at(found, truth), 4),
                     "params": {k: v for k, v in params.items() if k != "mode"}})
        del gallery, queries
    if args.json:
        from benchmarks.common import machine_info
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(), "noise": args.noise, "results": rows}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
