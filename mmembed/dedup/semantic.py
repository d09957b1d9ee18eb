"""Semantic duplicates (SemDeDup, arXiv 2303.09540): image embeddings with cosine > 1 - eps, compared only
inside k-means clusters so the cost is sum(cluster^2) instead of n^2.

Pieces a Beam job calls per element: ``train_centroids`` (once, on a sample), ``assign`` (per batch),
``split_cluster`` (per oversized cluster), ``cluster_duplicates`` (per cluster), ``compare_cluster`` (both, per
k-means cluster), ``block_range_pairs`` (recall, per file); ``semantic_result`` joins their per-row outputs.
``deduplicate_clusters`` runs the per-cluster part over a whole assigned set on one machine (the tests' and
benchmarks' ``tests/dedup/inmemory.py`` runs all of it on vectors in memory). ``range_pairs`` + ``pair_recall``
measure what the clustering misses against exact all-pairs search at the same threshold.
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
    copies, _ = _copies(identical)
    compared = np.ones(count, dtype=bool)
    compared[copies] = False
    ordered = np.flatnonzero(compared)
    ordered = ordered[np.argsort(top[ordered], kind="stable")]
    rows, tops, parts, nearest, similarity = [], [], [], [], []
    lefts, rights, pairs = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], 0
    for cluster in np.split(ordered, np.flatnonzero(np.diff(top[ordered])) + 1) if len(ordered) else []:
        label = int(top[cluster[0]])
        for part, (mine, found) in enumerate(compare_cluster(vectors_of(cluster), cluster, centroids[label], config)):
            rows.append(mine)
            tops.append(np.full(len(mine), label, dtype=np.int64))
            parts.append(np.full(len(mine), part, dtype=np.int64))
            nearest.append(found.nearest)
            similarity.append(found.centroid_similarity)
            lefts.append(found.links.left)
            rights.append(found.links.right)
            pairs += found.links.pairs
    empty_rows, empty_values = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return semantic_result(
        count,
        np.concatenate([empty_rows, *rows]),
        np.concatenate([empty_rows, *tops]),
        np.concatenate([empty_rows, *parts]),
        np.concatenate([empty_values, *nearest]),
        np.concatenate([empty_values, *similarity]),
        Links(METHOD, np.concatenate(lefts), np.concatenate(rights), pairs),
        len(centroids),
        config,
        identical,
    )


def compare_cluster(
    vectors: np.ndarray, row_ids: np.ndarray, centroid: np.ndarray, config: SemanticConfig
) -> list[tuple[np.ndarray, ClusterDuplicates]]:
    """One k-means cluster (a Beam GroupByKey on the assigned centroid; rows ascending, so results do not depend
    on arrival order): split when above ``max_cluster_size``, then the pairs inside each final part, as
    [(rows of the part, what it holds)] in part order."""
    rows = np.asarray(row_ids, dtype=np.int64)
    parts, part_centroids = np.zeros(len(rows), dtype=np.int64), np.asarray(centroid, dtype=np.float32)[None, :]
    if len(rows) > config.max_cluster_size:
        parts, part_centroids = split_cluster(
            vectors, config.max_cluster_size, config.seed, config.kmeans_iterations, config.device
        )
    found = []
    for part in np.unique(parts):
        mine = parts == part
        found.append(
            (
                rows[mine],
                cluster_duplicates(vectors[mine], rows[mine], config.eps, part_centroids[part], config.block_size),
            )
        )
    return found


def semantic_result(
    count: int,
    rows: np.ndarray,
    top: np.ndarray,
    part: np.ndarray,
    nearest: np.ndarray,
    centroid_similarity: np.ndarray,
    links: Links,
    n_clusters: int,
    config: SemanticConfig,
    identical: Links | None = None,
) -> SemanticDuplicates:
    """The whole set's result from every final cluster's per-row values, in any order (a Beam job's outputs):
    compared ``rows`` with their k-means cluster ``top``, ``part`` of it after splitting, best in-cluster cosine
    and cosine to the part's centroid; ``links`` of all parts. Final clusters are numbered in (top, part) order;
    exact copies (``identical``) join their original's cluster at cosine 1."""
    rows = np.asarray(rows, dtype=np.int64)
    top, part = np.asarray(top, dtype=np.int64), np.asarray(part, dtype=np.int64)
    copies, originals = _copies(identical)
    clusters = np.full(count, -1, dtype=np.int64)
    similarity = np.full(count, np.nan, dtype=np.float32)
    best = np.full(count, np.nan, dtype=np.float32)
    final, label = np.unique(np.stack([top, part], axis=1), axis=0, return_inverse=True)
    clusters[rows] = label.reshape(-1)
    similarity[rows] = centroid_similarity
    best[rows] = nearest
    sizes = np.bincount(label.reshape(-1), minlength=len(final))
    split = np.bincount(top).astype(np.int64) if len(top) else np.zeros(0, dtype=np.int64)
    if len(copies):  # a copy sits where its original sits, and both have a twin at cosine 1
        clusters[copies] = clusters[originals]
        similarity[copies] = similarity[originals]
        best[copies] = best[originals] = 1.0
    stats = {
        "eps": config.eps,
        "threshold": round(config.threshold, 6),
        "clusters": n_clusters,
        "final_clusters": len(final),
        "split_clusters": int(np.count_nonzero(split > config.max_cluster_size)),
        "largest_cluster": int(sizes.max(initial=0)),
        "compared_rows": count - len(copies),
        "exact_copies_skipped": len(copies),
        "pairs": int(links.pairs),
    }
    return SemanticDuplicates(links, clusters, similarity, best, stats)


def range_pairs(
    queries: np.ndarray,
    query_rows: np.ndarray,
    database: Iterable[np.ndarray],
    threshold: float,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Exact all-pairs ground truth for some query rows: every (query row, database row) with cosine >
    ``threshold`` over the whole set, streamed block by block (faiss ``range_ground_truth``); self-pairs dropped."""
    return _range_hits(queries, query_rows, database, 0, threshold, device)


def block_range_pairs(
    queries: np.ndarray, query_rows: np.ndarray, block: np.ndarray, start: int, threshold: float, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """``range_pairs`` against one block of the set whose first row is ``start`` (one embeddings file on a Beam
    worker): the union over all blocks is ``range_pairs`` over the whole set."""
    return _range_hits(queries, query_rows, [block], start, threshold, device)


def _range_hits(
    queries: np.ndarray,
    query_rows: np.ndarray,
    database: Iterable[np.ndarray],
    start: int,
    threshold: float,
    device: str,
) -> tuple[np.ndarray, np.ndarray]:
    lims, _, ids = range_ground_truth(
        np.ascontiguousarray(queries, dtype=np.float32),
        (np.ascontiguousarray(b, dtype=np.float32) for b in database),
        float(threshold),
        metric_type=faiss.METRIC_INNER_PRODUCT,
        ngpu=1 if device == "cuda" else 0,
    )
    left = np.repeat(np.asarray(query_rows, dtype=np.int64), np.diff(lims.astype(np.int64)))
    ids = ids.astype(np.int64) + start
    other = left != ids
    return left[other], ids[other]


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
