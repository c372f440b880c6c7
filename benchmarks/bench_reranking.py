"""Time and memory of k-reciprocal re-ranking (kdem_tf.evaluation.reranking) at SYSU-MM01 size and beyond.

    python -m benchmarks.bench_reranking [--large-gallery 10000] [--large-dim 512] [--skip-large]
                                         [--reference PATH/TO/rerank.py] [--json OUT]

1. SYSU-MM01 all-search size, one trial: 3,803 queries x 301 gallery, 2048-d random features
   with identity structure: `rerank_features` (distances computed chunk by chunk) and
   `re_ranking` on precomputed [Q, G], [Q, Q], [G, G] Euclidean matrices (outside the
   traced figure); time, peak traced memory; mAP plain vs re-ranked under the SYSU rules.
2. One larger gallery (3,803 x --large-gallery, --large-dim features) from features: the
   float32 [N, N] cache no longer fits its 512 MiB default, so distance rows are computed twice.
3. --reference: a local copy of the reference function's file (torchreid's
   torchreid/utils/rerank.py or fast-reid's fastreid/evaluation/rerank.py; not part of this
   repository), timed on the same SYSU-size matrices, with the largest difference to ours.
"""
from __future__ import annotations

import argparse
import importlib.util
import resource

import numpy as np

from benchmarks.common import traced, write_json

from kdem_tf import evaluation as ev
from kdem_tf.evaluation import reranking as rr
from kdem_tf.datasets import sysu as sysu_ds

SYSU_QUERIES, SYSU_GALLERY, SYSU_IDS, SYSU_DIM = 3803, 301, 96, 2048


def identity_features(rng, pids: np.ndarray, centres: np.ndarray, shift: np.ndarray, noise: float) -> np.ndarray:
    """Per-id centre + a modality shift + noise (the evaluation normalises them)."""
    return centres[pids] + shift + noise * rng.normal(size=(len(pids), centres.shape[1]))


def cross_modal_set(rng, num_q: int, num_g: int, num_ids: int, dim: int, noise: float = 4.5):
    """Infrared-like queries (cams 3, 6) and a visible-like gallery (cams 1, 2, 4, 5) of num_ids ids."""
    centres = rng.normal(size=(num_ids, dim))
    q_pids = np.sort(rng.integers(0, num_ids, num_q))
    g_pids = np.sort(np.r_[np.arange(num_ids), rng.integers(0, num_ids, max(0, num_g - num_ids))])[:num_g]
    qf = identity_features(rng, q_pids, centres, rng.normal(size=dim), noise)
    gf = identity_features(rng, g_pids, centres, rng.normal(size=dim), noise)
    return qf, gf, q_pids, g_pids, rng.choice([3, 6], num_q), rng.choice([1, 2, 4, 5], num_g)




def euclidean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] Euclidean distances between L2-normalised rows (float64)."""
    return np.concatenate([d for _, d in ev.distance_chunks(a / np.linalg.norm(a, axis=1, keepdims=True),
                                                            b / np.linalg.norm(b, axis=1, keepdims=True),
                                                            "euclidean")])


def mean_ap(dist, q_pids, g_pids, q_cams, g_cams) -> float:
    return float(sysu_ds.eval_sysu(dist, q_pids, g_pids, q_cams, g_cams)[1]) * 100.0


def bench_sysu(rng, reference_path) -> dict:
    qf, gf, q_pids, g_pids, q_cams, g_cams = cross_modal_set(rng, SYSU_QUERIES, SYSU_GALLERY, SYSU_IDS, SYSU_DIM)
    print(f"SYSU-sized ({SYSU_QUERIES} x {SYSU_GALLERY}, {SYSU_DIM}-d, {SYSU_IDS} ids)")
    from_feats, s_feats, peak_feats = traced(lambda: rr.rerank_features(qf, gf))
    print(f"  rerank_features:              {s_feats:7.2f} s, peak traced {peak_feats:7.1f} MiB")
    q_g, q_q, g_g = euclidean(qf, gf), euclidean(qf, qf), euclidean(gf, gf)
    inputs_mib = (q_g.nbytes + q_q.nbytes + g_g.nbytes) / 2 ** 20
    from_matrix, s_matrix, peak_matrix = traced(lambda: rr.re_ranking(q_g, q_q, g_g))
    print(f"  re_ranking on matrices:       {s_matrix:7.2f} s, peak traced {peak_matrix:7.1f} MiB "
          f"beyond the {inputs_mib:.0f} MiB of inputs")
    reranker = rr.TrialReranker(rr.RerankParams())
    _, s_first, _ = traced(lambda: reranker(qf, gf))
    _, s_next, peak_next = traced(lambda: reranker(qf, gf[::-1].copy()))
    print(f"  TrialReranker (kdem_tf.evaluate --rerank): first trial {s_first:6.2f} s, each next trial "
          f"{s_next:6.2f} s (queries' [Q, Q] kept), peak traced {peak_next:7.1f} MiB")
    plain, reranked = (mean_ap(d, q_pids, g_pids, q_cams, g_cams) for d in (q_g, from_matrix))
    print(f"  mAP plain {plain:.2f} -> re-ranked {reranked:.2f}; features vs matrices max |diff| "
          f"{np.abs(from_feats - from_matrix).max():.2e}")
    out = {"queries": SYSU_QUERIES, "gallery": SYSU_GALLERY, "dim": SYSU_DIM, "identities": SYSU_IDS,
           "from_features": {"seconds": round(s_feats, 3), "peak_traced_mib": round(peak_feats, 1)},
           "from_matrices": {"seconds": round(s_matrix, 3), "peak_traced_mib": round(peak_matrix, 1),
                             "inputs_mib": round(inputs_mib, 1)},
           "trial_reranker": {"first_trial_seconds": round(s_first, 3), "next_trial_seconds": round(s_next, 3),
                              "next_trial_peak_traced_mib": round(peak_next, 1)},
           "mAP_plain": round(plain, 3), "mAP_reranked": round(reranked, 3),
           "features_vs_matrices_max_abs_diff": float(np.abs(from_feats - from_matrix).max())}
    if reference_path:
        reference = load_reference(reference_path)
        ref, s_ref, peak_ref = traced(lambda: reference(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3))
        diff = float(np.abs(ref - from_matrix).max())
        print(f"  reference re_ranking:         {s_ref:7.2f} s, peak traced {peak_ref:7.1f} MiB; "
              f"ours is {s_ref / s_matrix:.1f}x faster with {peak_ref / max(peak_matrix, 1e-9):.1f}x less memory; "
              f"max |ours - reference| {diff:.2e}")
        out["reference"] = {"file": reference_path, "seconds": round(s_ref, 3), "peak_traced_mib": round(peak_ref, 1),
                            "speedup": round(s_ref / s_matrix, 2), "max_abs_diff": diff,
                            "memory_ratio": round(peak_ref / max(peak_matrix, 1e-9), 2)}
    return out


def load_reference(path: str):
    spec = importlib.util.spec_from_file_location("reference_rerank", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.re_ranking


def bench_large(rng, num_g: int, dim: int) -> dict:
    qf, gf, q_pids, g_pids, q_cams, g_cams = cross_modal_set(rng, SYSU_QUERIES, num_g, max(SYSU_IDS, num_g // 10), dim,
                                                                noise=1.5)
    n = SYSU_QUERIES + num_g
    cached = n * n * 4 <= rr.DEFAULT_CACHE_BYTES
    print(f"larger gallery ({SYSU_QUERIES} x {num_g}, {dim}-d; d-row cache {'on' if cached else 'off'})")
    dist, seconds, peak = traced(lambda: rr.rerank_features(qf, gf))
    reranked = mean_ap(dist, q_pids, g_pids, q_cams, g_cams)
    print(f"  rerank_features:              {seconds:7.2f} s, peak traced {peak:7.1f} MiB "
          f"(a float32 [N, N] alone would be {n * n * 4 / 2 ** 20:.0f} MiB); re-ranked mAP {reranked:.2f}")
    return {"queries": SYSU_QUERIES, "gallery": num_g, "dim": dim, "cache": cached, "seconds": round(seconds, 3),
            "peak_traced_mib": round(peak, 1), "full_matrix_float32_mib": round(n * n * 4 / 2 ** 20, 1),
            "mAP_reranked": round(reranked, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--large-gallery", type=int, default=10_000, help="gallery size of the larger run")
    p.add_argument("--large-dim", type=int, default=512, help="feature dim of the larger run")
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--reference", help="a local copy of the reference rerank.py, to time it too")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    results = {"sysu": bench_sysu(rng, args.reference)}
    if not args.skip_large:
        results["large"] = bench_large(rng, args.large_gallery, args.large_dim)
    results["process_max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"process max RSS {results['process_max_rss_mib']} MiB")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
