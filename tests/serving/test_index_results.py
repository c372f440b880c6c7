"""serving.index answers: ranked results equal a NumPy argsort of the dot products."""
from __future__ import annotations

import numpy as np
import pytest

from serving.export import gallery_index as index_lib


def _gallery(n: int = 300, dim: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(n, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    entries = [index_lib.GalleryEntry(person_id=i // 3, camera=1 + i % 2, path=f"g/{i:04d}.png", modality="visible")
               for i in range(n)]
    queries = rng.normal(size=(7, dim)).astype(np.float32)
    return embeddings, entries, queries


def _argsort_top(embeddings, queries, k):
    scores = queries.astype(np.float64) @ embeddings.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_saved_brute_force_index_ranks_as_numpy_argsort(tmp_path):
    embeddings, entries, queries = _gallery()
    out = index_lib.save_index(str(tmp_path / "index"), embeddings, entries, {"mode": "brute_force"})
    index = index_lib.load_index(out)
    indices, scores = index.search(queries, k=10)
    expected_indices, expected_scores = _argsort_top(embeddings, queries, 10)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    # The entries follow the indices: each result names its own gallery image and identity.
    for row, ranked in enumerate(index.results(indices, scores)):
        assert [r["path"] for r in ranked] == [entries[i].path for i in expected_indices[row]]
        assert [r["person_id"] for r in ranked] == [entries[i].person_id for i in expected_indices[row]]


def test_k_is_capped_at_the_gallery_size():
    embeddings, entries, queries = _gallery(n=5)
    index = index_lib.GalleryIndex(index_lib.build_searcher(embeddings, {"mode": "brute_force"}, k=10),
                                   {"paths": np.array([e.path for e in entries])}, embeddings,
                                   {"params": {"mode": "brute_force"}})
    indices, _ = index.search(queries, k=50)
    np.testing.assert_array_equal(indices, _argsort_top(embeddings, queries, 5)[0])


def test_tree_ah_index_recalls_the_exact_neighbours():
    # Approximate search: the exact top 10 (argsort) must mostly be found, best first after reordering.
    embeddings, entries, queries = _gallery(n=2000, dim=32, seed=1)
    params = {"mode": "tree_ah", "num_leaves": 20, "spherical": True, "leaves_to_search": 10, "reorder": 100,
              "dims_per_block": 2, "anisotropic_quantization_threshold": 0.2, "training_sample_size": 2000,
              "ah_training_sample_size": 2000}
    index = index_lib.GalleryIndex(index_lib.build_searcher(embeddings, params),
                                   {"paths": np.array([e.path for e in entries])}, embeddings, {"params": params})
    indices, scores = index.search(queries, k=10)
    expected, _ = _argsort_top(embeddings, queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(indices, expected)])
    assert recall >= 0.8, recall
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    exact = np.take_along_axis(queries @ embeddings.T, indices, axis=1)
    np.testing.assert_allclose(scores, exact, rtol=1e-4, atol=1e-5)  # reordered scores are exact dot products
