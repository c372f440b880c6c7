"""Speed and memory of kdem_tf.evaluation against the AGW per-query loop (prints figures only).

    python -m benchmarks.bench_evaluation [--skip-large] [--reference-large] [--json OUT]

1. SYSU-MM01-sized: 3,803 infrared queries x 301 visible gallery x 10 trials, 96 ids,
   2048-d features with identity structure; AGW loop vs ours on the same distance
   matrices, plus a bit-for-bit comparison of every trial's numbers.
2. 10,000 x 10,000 from features (distances computed chunk by chunk), SYSU and RegDB
   protocols: time and peak traced memory; and from a precomputed [10k, 10k] matrix.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from benchmarks.agw_oracle import agw_eval_regdb, agw_eval_sysu
from benchmarks.common import traced, write_json

from kdem_tf import evaluation as ev
from kdem_tf.datasets import sysu as sysu_ds
from kdem_tf.datasets import regdb as regdb_ds

SYSU_QUERIES, SYSU_GALLERY, SYSU_IDS, SYSU_TRIALS, SYSU_DIM = 3803, 301, 96, 10, 2048


def identity_features(rng, pids: np.ndarray, centres: np.ndarray, cam_shift: np.ndarray, noise: float) -> np.ndarray:
    """Per-id centre + a modality shift + noise, L2-normalised like a ReID embedder's output."""
    x = centres[pids] + cam_shift + noise * rng.normal(size=(len(pids), centres.shape[1]))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def sysu_like(rng):
    """Query set and ten single-shot galleries shaped like SYSU-MM01 all-search."""
    centres = rng.normal(size=(SYSU_IDS, SYSU_DIM))
    ir_shift, vis_shift = rng.normal(size=SYSU_DIM), rng.normal(size=SYSU_DIM)
    q_pids = np.sort(rng.integers(0, SYSU_IDS, SYSU_QUERIES))
    q_cams = rng.choice([3, 6], SYSU_QUERIES)
    qf = identity_features(rng, q_pids, centres, ir_shift, 4.5)
    galleries = []
    for _ in range(SYSU_TRIALS):
        slots = np.array([(p, c) for p in range(SYSU_IDS) for c in (1, 2, 4, 5)])
        slots = slots[np.sort(rng.choice(len(slots), SYSU_GALLERY, replace=False))]
        gf = identity_features(rng, slots[:, 0], centres, vis_shift, 4.5)
        galleries.append((gf, slots[:, 0], slots[:, 1]))
    return qf, q_pids, q_cams, galleries


def same(a, b) -> bool:
    return bool(np.array_equal(a[0], b[0]) and a[0].dtype == b[0].dtype and a[1] == b[1] and a[2] == b[2])


def bench_sysu(rng) -> dict:
    qf, q_pids, q_cams, galleries = sysu_like(rng)
    dists = [-np.matmul(qf, np.transpose(gf)) for gf, _, _ in galleries]  # AGW test.py distances
    t0 = time.perf_counter()
    ref = [agw_eval_sysu(d, q_pids, g_pids, q_cams, g_cams) for d, (_, g_pids, g_cams) in zip(dists, galleries)]
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = [sysu_ds.eval_sysu(d, q_pids, g_pids, q_cams, g_cams) for d, (_, g_pids, g_cams) in zip(dists, galleries)]
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    from_feats = [ev.evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, "sysu", "dot")
                  for gf, g_pids, g_cams in galleries]
    t_feats = time.perf_counter() - t0
    identical = all(same(a, b) for a, b in zip(ours, ref)) and all(same(a, b) for a, b in zip(from_feats, ref))
    mean = ev.summary(*ev.average_trials([ev.TrialResult(t, *r, SYSU_QUERIES, SYSU_GALLERY) for t, r in enumerate(ours)]))
    print(f"SYSU-sized ({SYSU_QUERIES} x {SYSU_GALLERY} x {SYSU_TRIALS} trials, {SYSU_IDS} ids)")
    print(f"  AGW loop (eval only)        {t_ref:8.3f} s")
    print(f"  ours eval_sysu (eval only)  {t_ours:8.3f} s   speed-up {t_ref / t_ours:6.1f}x")
    print(f"  ours from features (+dist)  {t_feats:8.3f} s")
    print(f"  identical to AGW, all trials: {identical}")
    print("  mean: " + "  ".join(f"{k} {v:.2f}" for k, v in mean.items()))
    return {"queries": SYSU_QUERIES, "gallery": SYSU_GALLERY, "trials": SYSU_TRIALS, "identities": SYSU_IDS,
            "reference_seconds": round(t_ref, 4), "ours_seconds": round(t_ours, 4),
            "speedup": round(t_ref / t_ours, 2), "from_features_seconds": round(t_feats, 4),
            "identical": identical, "mean": {k: float(v) for k, v in mean.items()}}




def bench_large(rng, reference: bool) -> dict:
    n, ids, dim = 10_000, 1_000, 256
    centres = rng.normal(size=(ids, dim))
    q_pids, g_pids = rng.integers(0, ids, n), rng.integers(0, ids, n)
    qf = identity_features(rng, q_pids, centres, 0.0, 2.2).astype(np.float32)
    gf = identity_features(rng, g_pids, centres, 0.0, 2.2).astype(np.float32)
    q_cams, g_cams = rng.choice([3, 6], n), rng.choice([1, 2, 4, 5], n)
    print(f"10,000 x 10,000 ({ids} ids, {dim}-d float32 features)")
    out = {"queries": n, "gallery": n, "identities": ids, "dim": dim}
    for protocol in ("sysu", "regdb"):
        r, s, peak = traced(lambda: ev.evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, protocol))
        print(f"  {protocol:5s} from features: {s:7.2f} s, peak traced memory {peak:7.1f} MiB, "
              f"rank1 {r[0][0] * 100:.2f} mAP {r[1] * 100:.2f}")
        out[f"{protocol}_from_features"] = {"seconds": round(s, 3), "peak_traced_mib": round(peak, 1),
                                            "rank1": float(r[0][0]), "mAP": float(r[1])}
    dist = np.empty((n, n))  # 763 MiB input, outside the traced figure
    for start, chunk in ev.distance_chunks(qf, gf, "cosine"):
        dist[start:start + len(chunk)] = chunk
    r, s, peak = traced(lambda: regdb_ds.eval_regdb(dist, q_pids, g_pids))
    print(f"  regdb from a [10k, 10k] float64 matrix: {s:7.2f} s, peak traced memory beyond the input {peak:7.1f} MiB")
    out["regdb_from_matrix"] = {"seconds": round(s, 3), "peak_traced_mib": round(peak, 1)}
    if reference:
        t0 = time.perf_counter()
        ref = agw_eval_regdb(dist, q_pids, g_pids)
        ref_seconds = time.perf_counter() - t0
        print(f"  AGW loop, same matrix: {ref_seconds:7.2f} s, identical: {same(r, ref)}")
        out["regdb_reference_from_matrix"] = {"seconds": round(ref_seconds, 3), "identical": same(r, ref)}
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  process max RSS {max_rss:.0f} MiB")
    out["process_max_rss_mib"] = round(max_rss)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--skip-large", action="store_true", help="skip the 10k x 10k runs")
    p.add_argument("--reference-large", action="store_true", help="also time the AGW loop at 10k x 10k")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    results = {"sysu": bench_sysu(rng)}
    if not args.skip_large:
        results["large"] = bench_large(rng, args.reference_large)
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
