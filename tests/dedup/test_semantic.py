"""semantic.py: clustered search finds planted near-duplicates with pair recall >= 0.99 vs exact all-pairs,
in-cluster tiles equal brute force, oversized clusters are split, exact copies skip comparison."""

from __future__ import annotations

import numpy as np
import pytest

from mmembed.dedup.config import SemanticConfig
from mmembed.dedup.links import Links, star_links
from mmembed.dedup.semantic import (
    assign,
    cluster_duplicates,
    pair_recall,
    range_pairs,
    split_cluster,
    train_centroids,
)
from tests.dedup.inmemory import find_semantic_duplicates
from tests.dedup.synth import near_copy
from tests.index.synth import blobs

EPS = 0.05


def planted(n: int, pairs: int, seed: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Clustered unit vectors (40 blobs) where ``pairs`` random rows get a near copy at cosine 0.98-0.999."""
    rng = np.random.default_rng(seed)
    vectors = blobs(n, dim, seed=seed, centres=40)
    chosen = rng.choice(n, size=2 * pairs, replace=False).reshape(-1, 2)
    for a, b in chosen:
        vectors[b] = near_copy(vectors[a], rng.uniform(0.98, 0.999), rng)
    return vectors, chosen


def truth(vectors: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(len(vectors))
    return range_pairs(vectors, rows, (vectors[i : i + 700] for i in range(0, len(vectors), 700)), threshold)


def test_exact_range_pairs_match_numpy() -> None:
    vectors, _ = planted(600, 40, seed=9)
    left, right = truth(vectors, 1 - EPS)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    a, b = np.nonzero(sims > 1 - EPS)
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == sorted(zip(a.tolist(), b.tolist(), strict=True))


def test_planted_near_duplicates_found_with_pair_recall_099() -> None:
    recalls = []
    for seed in range(4):
        vectors, chosen = planted(3000, 300, seed=seed)
        found = find_semantic_duplicates(vectors, SemanticConfig(eps=EPS, seed=seed))
        left, right = truth(vectors, 1 - EPS)
        assert len(left) == 2 * 300  # the planted pairs, each seen from both ends, and nothing else
        recalls.append(pair_recall(found.clusters, left, right))
        assert found.links.pairs == round(recalls[-1] * 300)  # every same-cluster true pair is found
        assert found.stats["clusters"] == 55  # ~sqrt(3000)
    assert np.mean(recalls) >= 0.99 and min(recalls) >= 0.98, recalls


def test_in_cluster_tiles_equal_brute_force() -> None:
    vectors, _ = planted(300, 30, seed=3)
    vectors[200:210] = vectors[199]  # a clique of 11 identical vectors: 55 pairs, 10 links
    rows = np.arange(300) + 5000
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    a, b = np.nonzero(np.triu(sims > 1 - EPS, k=1))
    for block in (7, 64, 4096):
        found = cluster_duplicates(vectors, rows, EPS, block_size=block)
        assert found.links.pairs == len(a)
        assert len(found.links) < len(a) and set(found.links.rows()) == set((np.r_[a, b] + 5000).tolist())
        np.testing.assert_allclose(found.nearest, sims.max(axis=1), rtol=1e-5)
        mean = vectors.mean(axis=0) / np.linalg.norm(vectors.mean(axis=0))
        np.testing.assert_allclose(found.centroid_similarity, vectors @ mean, rtol=1e-4, atol=1e-5)
    alone = cluster_duplicates(vectors[:1], rows[:1], EPS)
    assert np.isnan(alone.nearest[0]) and alone.links.pairs == 0


def test_oversized_clusters_are_split_until_bounded() -> None:
    vectors, _ = planted(2000, 150, seed=5)
    config = SemanticConfig(eps=EPS, n_clusters=4, max_cluster_size=120)
    found = find_semantic_duplicates(vectors, config)
    sizes = np.bincount(found.clusters)
    assert found.stats["split_clusters"] >= 1 and sizes.max() <= 120 and found.stats["largest_cluster"] <= 120
    assert (found.clusters >= 0).all() and found.stats["final_clusters"] == len(sizes)
    left, right = truth(vectors, 1 - EPS)
    assert pair_recall(found.clusters, left, right) >= 0.9  # ~17 parts of ~120: more borders, still most pairs


def test_split_cluster_directly_and_unsplittable_clusters() -> None:
    vectors, _ = planted(500, 10, seed=6)
    parts, centroids = split_cluster(vectors, 100, seed=0)
    assert np.bincount(parts).max() <= 100 and len(centroids) == parts.max() + 1
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1, rtol=1e-5)
    same = np.repeat(vectors[:1], 40, axis=0)  # 40 copies of one vector: k-means cannot split them
    parts, _ = split_cluster(same, 10, seed=0)
    assert (parts == 0).all()
    assert cluster_duplicates(same, np.arange(40), EPS, block_size=16).links.pairs == 40 * 39 // 2


def test_exact_copies_skip_comparison_and_join_their_original() -> None:
    vectors, _ = planted(1000, 20, seed=7)
    vectors[900:1000] = vectors[899]  # 100 byte-identical copies of row 899
    identical = star_links("exact", np.arange(899, 1000))
    found = find_semantic_duplicates(vectors, SemanticConfig(eps=EPS), identical)
    assert found.stats["compared_rows"] == 900 and found.stats["exact_copies_skipped"] == 100
    assert (found.clusters[900:] == found.clusters[899]).all()
    assert (found.nearest[899:] == 1.0).all()
    with pytest.raises(ValueError, match="stars"):
        find_semantic_duplicates(vectors, SemanticConfig(eps=EPS), Links("exact", [1, 2], [2, 3]))


def test_kmeans_is_seeded_and_assignment_is_nearest_centroid() -> None:
    vectors, _ = planted(800, 10, seed=8)
    first, second = train_centroids(vectors, 10, seed=3), train_centroids(vectors, 10, seed=3)
    np.testing.assert_array_equal(first, second)
    labels, scores = assign(vectors, first)
    np.testing.assert_array_equal(labels, np.argmax(vectors @ first.T, axis=1))
    np.testing.assert_allclose(scores, np.max(vectors @ first.T, axis=1), rtol=1e-5)


def test_pair_recall_counts_pairs_sharing_a_cluster() -> None:
    clusters = np.array([0, 0, 1, 1, 2])
    assert pair_recall(clusters, np.array([0, 2, 0, 3]), np.array([1, 3, 4, 4])) == 0.5
    assert pair_recall(clusters, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)) == 1.0
