"""Semantic duplicates (SemDeDup, arXiv 2303.09540): image embeddings with cosine > 1 - eps, compared only
inside k-means clusters so the cost is sum(cluster^2) instead of n^2.

Pieces a Beam job calls per element: ``train_centroids`` (once, on a sample), ``assign`` (per batch),
``split_cluster`` (per oversized cluster), ``cluster_duplicates`` (per cluster). ``deduplicate_clusters``
runs the per-cluster part over a whole assigned set on one machine, ``find_semantic_duplicates`` everything
for vectors in memory. ``range_pairs`` + ``pair_recall`` measure what the clustering misses against exact
all-pairs search at the same threshold.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import range_ground_truth

from mmembed.dedup.config import SemanticConfig
from mmembed.dedup.links import Links, forest
from mmembed.index.evaluate import sample_rows

log = logging.getLogger(__name__)
METHOD = "semantic"
MAX_SPLIT_DEPTH = 8


@dataclass(frozen=True)
class ClusterDuplicates:
    """What one cluster holds: links (a star forest with the components of all pairs above the threshold),
    the pair count, each row's best cosine to another row of the cluster (nan when alone; an approximate
    nearest-neighbour similarity for the eps histogram) and its cosine to the cluster centroid (SemDeDup's
    hard / easy ranking)."""

    links: Links
    nearest: np.ndarray
    centroid_similarity: np.ndarray


@dataclass(frozen=True)
class SemanticDuplicates:
    """Per row over a whole set: final (leaf) cluster, cosine to its centroid, best cosine to another row of its
    cluster (nan when alone); the links of all clusters; statistics for the summary."""

    links: Links
    clusters: np.ndarray
    centroid_similarity: np.ndarray
    nearest: np.ndarray
    stats: dict[str, Any]


def auto_clusters(count: int) -> int:
    """~sqrt(rows) clusters: cluster size ~ cluster count, which balances k-means against in-cluster cost."""
    return max(1, round(math.sqrt(count)))


def train_centroids(
    sample: np.ndarray, n_clusters: int, seed: int = 0, iterations: int = 20, device: str = "cpu"
) -> np.ndarray:
    """Spherical k-means (unit-norm centroids, inner product) on a sample; on GPU when ``device`` is 'cuda'."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    k = max(1, min(n_clusters, len(sample)))
    kmeans = faiss.Kmeans(
        sample.shape[1],
        k,
        niter=iterations,
        seed=seed,
        spherical=True,
        gpu=device == "cuda",
        min_points_per_centroid=1,  # a small sample is fine; silences faiss' "please provide 39*k" warning
        max_points_per_centroid=max(256, math.ceil(len(sample) / k)),
    )
    kmeans.train(sample)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def assign(vectors: np.ndarray, centroids: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine for each vector: (cluster ids int64, cosine to that centroid float32)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if device == "cuda":
        scores, ids = faiss.knn_gpu(_gpu_resources(), vectors, centroids, 1, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        scores, ids = faiss.knn(vectors, centroids, 1, metric=faiss.METRIC_INNER_PRODUCT)
    return ids[:, 0].astype(np.int64), scores[:, 0].astype(np.float32)


def split_cluster(
    vectors: np.ndarray, max_cluster_size: int, seed: int = 0, iterations: int = 20, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Recursive k-means until every part holds <= ``max_cluster_size`` rows, so in-cluster cost stays bounded:
    (part id per row, 0..P-1, unit centroids (P, d)). A part k-means cannot split (identical vectors) stays
    whole and is compared in tiles anyway (bounded memory, quadratic time), with a warning."""
    labels = np.zeros(len(vectors), dtype=np.int64)
    centroids = [_mean_direction(vectors)]
    pending = [(np.arange(len(vectors)), 0, 0)]  # (rows, part id, depth)
    while pending:
        rows, part, depth = pending.pop()
        if len(rows) <= max_cluster_size:
            continue
        if depth >= MAX_SPLIT_DEPTH:
            log.warning("cluster of %d rows still above %d after %d splits", len(rows), max_cluster_size, depth)
            continue
        k = min(len(rows), math.ceil(2 * len(rows) / max_cluster_size))
        sub_centroids = train_centroids(vectors[rows], k, seed + depth + 1, iterations, device)
        sub, _ = assign(vectors[rows], sub_centroids, device)
        used = np.unique(sub)
        if len(used) < 2:
            log.warning("cluster of %d rows cannot be split (near-identical vectors); comparing it whole", len(rows))
            continue
        for n, child in enumerate(used):
            child_rows = rows[sub == child]
            child_part = part if n == 0 else len(centroids)
            if n == 0:
                centroids[part] = sub_centroids[child]
            else:
                centroids.append(sub_centroids[child])
            labels[child_rows] = child_part
            pending.append((child_rows, child_part, depth + 1))
    return labels, np.stack(centroids).astype(np.float32)


def cluster_duplicates(
    vectors: np.ndarray,
    row_ids: np.ndarray,
    eps: float,
    centroid: np.ndarray | None = None,
    block_size: int = 2048,
) -> ClusterDuplicates:
    """All pairs of one cluster with cosine > 1 - eps, compared in ``block_size`` tiles (memory: two tiles and
    their similarity matrix, whatever the cluster size). Vectors must be unit-norm."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.asarray(row_ids, dtype=np.int64)
    m, threshold = len(vectors), np.float32(1.0 - eps)
    nearest = np.full(m, -np.inf, dtype=np.float32)
    left, right = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = 0
    for i0 in range(0, m, block_size):
        for j0 in range(i0, m, block_size):
            sims = vectors[i0 : i0 + block_size] @ vectors[j0 : j0 + block_size].T
            if i0 == j0:
                np.fill_diagonal(sims, -np.inf)
            np.maximum(nearest[i0 : i0 + len(sims)], sims.max(axis=1), out=nearest[i0 : i0 + len(sims)])
            np.maximum(nearest[j0 : j0 + sims.shape[1]], sims.max(axis=0), out=nearest[j0 : j0 + sims.shape[1]])
            flat = np.flatnonzero(sims > threshold)
            a, b = np.divmod(flat, sims.shape[1])
            if i0 == j0:
                a, b = a[b > a], b[b > a]
            pairs += len(a)
            if len(a):  # fold this tile's pairs in as a star forest: links stay <= rows, not pairs
                left, right = forest(np.concatenate([left, i0 + a]), np.concatenate([right, j0 + b]))
    nearest[~np.isfinite(nearest)] = np.nan
    direction = _mean_direction(vectors) if centroid is None else np.asarray(centroid, dtype=np.float32)
    return ClusterDuplicates(
        Links(METHOD, rows[left], rows[right], pairs), nearest, (vectors @ direction).astype(np.float32)
    )


def deduplicate_clusters(
    vectors_of: Callable[[np.ndarray], np.ndarray],
    top: np.ndarray,
    centroids: np.ndarray,
    config: SemanticConfig,
    identical: Links | None = None,
) -> SemanticDuplicates:
    """Given each row's k-means cluster (``top``), split clusters above ``max_cluster_size`` and find the pairs
    inside every final cluster; ``vectors_of(sorted rows)`` fetches one cluster at a time. ``identical`` star
    links (exact: right rows are byte-identical copies of left rows) let copies skip comparison and join their
    original's cluster: same bytes, same embedding, so 10,000 copies of a placeholder are not one 10,000^2 cluster."""
    count = len(top)
    copies, originals = _copies(identical)
    compared = np.ones(count, dtype=bool)
    compared[copies] = False
    clusters = np.full(count, -1, dtype=np.int64)
    centroid_similarity = np.full(count, np.nan, dtype=np.float32)
    nearest = np.full(count, np.nan, dtype=np.float32)
    lefts, rights, pairs, sizes, split = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0, [], 0
    ordered = np.flatnonzero(compared)
    ordered = ordered[np.argsort(top[ordered], kind="stable")]
    for rows in np.split(ordered, np.flatnonzero(np.diff(top[ordered])) + 1) if len(ordered) else []:
        vectors = vectors_of(rows)
        parts, part_centroids = np.zeros(len(rows), dtype=np.int64), centroids[top[rows[:1]]]
        if len(rows) > config.max_cluster_size:
            parts, part_centroids = split_cluster(
                vectors, config.max_cluster_size, config.seed, config.kmeans_iterations, config.device
            )
            split += 1
        for part in np.unique(parts):
            mine = parts == part
            found = cluster_duplicates(vectors[mine], rows[mine], config.eps, part_centroids[part], config.block_size)
            clusters[rows[mine]] = len(sizes)
            sizes.append(int(mine.sum()))
            nearest[rows[mine]] = found.nearest
            centroid_similarity[rows[mine]] = found.centroid_similarity
            lefts.append(found.links.left)
            rights.append(found.links.right)
            pairs += found.links.pairs
    if len(copies):  # a copy sits where its original sits, and both have a twin at cosine 1
        clusters[copies] = clusters[originals]
        centroid_similarity[copies] = centroid_similarity[originals]
        nearest[copies] = nearest[originals] = 1.0
    stats = {
        "eps": config.eps,
        "threshold": round(config.threshold, 6),
        "clusters": len(centroids),
        "final_clusters": len(sizes),
        "split_clusters": split,
        "largest_cluster": max(sizes, default=0),
        "compared_rows": int(compared.sum()),
        "exact_copies_skipped": len(copies),
        "pairs": pairs,
    }
    links = Links(METHOD, np.concatenate(lefts), np.concatenate(rights), pairs)
    return SemanticDuplicates(links, clusters, centroid_similarity, nearest, stats)


def find_semantic_duplicates(
    vectors: np.ndarray, config: SemanticConfig, identical: Links | None = None
) -> SemanticDuplicates:
    """The whole semantic method for unit vectors in memory: k-means on a seeded sample, assign, per cluster."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    k = min(config.n_clusters or auto_clusters(count), max(count, 1))
    sample = sample_rows(count, min(count, max(config.sample_size, k)), config.seed)
    centroids = train_centroids(vectors[sample], k, config.seed, config.kmeans_iterations, config.device)
    top, _ = assign(vectors, centroids, config.device)
    return deduplicate_clusters(lambda rows: vectors[rows], top, centroids, config, identical)


def range_pairs(
    queries: np.ndarray,
    query_rows: np.ndarray,
    database: Iterable[np.ndarray],
    threshold: float,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact all-pairs ground truth for some query rows: every (query row, database row) with cosine >
    ``threshold`` over the whole set, streamed block by block (faiss ``range_ground_truth``); self-pairs dropped."""
    lims, _, ids = range_ground_truth(
        np.ascontiguousarray(queries, dtype=np.float32),
        (np.ascontiguousarray(b, dtype=np.float32) for b in database),
        float(threshold),
        metric_type=faiss.METRIC_INNER_PRODUCT,
        ngpu=1 if device == "cuda" else 0,
    )
    left = np.repeat(np.asarray(query_rows, dtype=np.int64), np.diff(lims.astype(np.int64)))
    other = left != ids
    return left[other], ids[other].astype(np.int64)


def pair_recall(clusters: np.ndarray, left: np.ndarray, right: np.ndarray) -> float:
    """Share of true pairs whose two rows share a (final) cluster: in-cluster comparison is exhaustive, so that
    is exactly the share of pairs the clustered search finds. 1.0 when there are no true pairs."""
    return float(np.mean(clusters[left] == clusters[right])) if len(left) else 1.0


@functools.cache
def _gpu_resources() -> faiss.StandardGpuResources:
    """One set of GPU scratch memory for every ``assign`` call, not one allocation per batch."""
    return faiss.StandardGpuResources()


def _copies(identical: Links | None) -> tuple[np.ndarray, np.ndarray]:
    """(copy rows, their original rows) from star links whose left rows are never copies themselves."""
    if identical is None or not len(identical):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if np.isin(identical.left, identical.right).any():
        raise ValueError("identical links must be stars: an original (left) row cannot also be a copy (right)")
    copies, first = np.unique(identical.right, return_index=True)
    return copies, identical.left[first]


def _mean_direction(vectors: np.ndarray) -> np.ndarray:
    mean = np.asarray(vectors, dtype=np.float64).mean(axis=0) if len(vectors) else np.zeros(0)
    norm = np.linalg.norm(mean)
    return (mean / norm if norm > 0 else mean).astype(np.float32)
