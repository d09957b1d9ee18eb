"""Measure an index against exact search: seeded self-queries, k-recall@k and queries per second."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import faiss
import numpy as np

from mmembed.index.reader import EmbeddingFiles, gather_rows, iter_vectors


def sample_rows(count: int, size: int, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``size`` sorted row ids drawn without replacement, avoiding ``exclude`` while enough rows remain."""
    rng = np.random.default_rng(seed)
    pool = np.arange(count, dtype=np.int64)
    if exclude is not None and count - len(exclude) >= size:
        pool = np.setdiff1d(pool, exclude, assume_unique=True)
    return np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))


def exact_search(queries: np.ndarray, batches: Iterable[np.ndarray], k: int, device: str = "cpu") -> np.ndarray:
    """Exact inner-product top-k row ids of ``queries`` over database batches (bounded memory), like faiss'
    ``contrib.exhaustive_search.knn_ground_truth``; on GPU when ``device`` is 'cuda'."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    resources = faiss.StandardGpuResources() if device == "cuda" else None
    start = 0
    for block in batches:
        kk = min(k, len(block))
        if resources is not None:
            scores, ids = faiss.knn_gpu(resources, queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        else:
            scores, ids = faiss.knn(queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(scores, np.where(ids >= 0, ids + start, -1))
        start += len(block)
    heap.finalize()
    return heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k found in the index's top-k (k-recall@k); -1 ids never count."""
    k = min(k, truth.shape[1], found.shape[1])
    hits = [len(np.intersect1d(f[:k][f[:k] >= 0], t[:k])) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k) if hits else 0.0


def evaluate_index(
    index: faiss.Index, queries: np.ndarray, truth: np.ndarray, ks: Sequence[int] = (1, 10, 100)
) -> dict:
    """recall@k for each k (capped at the truth's depth) and queries/s of one timed search at max(k)."""
    depth = min(max(ks), truth.shape[1])
    began = time.perf_counter()
    _, found = index.search(queries, depth)
    seconds = time.perf_counter() - began
    result = {f"recall@{k}": round(recall_at_k(found, truth, k), 4) for k in ks if k <= depth}
    result["queries"] = len(queries)
    result["queries_per_second"] = round(len(queries) / seconds, 1) if seconds > 0 else None
    return result


def evaluate_recall(
    index: faiss.Index,
    files: EmbeddingFiles,
    column: str,
    n_queries: int = 1000,
    ks: Sequence[int] = (1, 10, 100),
    seed: int = 0,
    batch_size: int = 65_536,
) -> dict:
    """Recall of ``index`` over ``files``' ``column`` with a seeded sample of its own vectors as queries."""
    rows = sample_rows(files.count, n_queries, seed)
    queries = gather_rows(files, column, rows, batch_size)
    truth = exact_search(
        queries, (b.vectors for b in iter_vectors(files, column, batch_size)), min(max(ks), files.count)
    )
    return evaluate_index(index, queries, truth, ks)


# eval-index directions: (query column, database column); both search the image index.
DIRECTIONS = {"text_to_image": "text_embedding", "image_to_image": "image_embedding"}


def evaluate_directions(
    image_index: faiss.Index,
    files: EmbeddingFiles,
    n_queries: int = 1000,
    ks: Sequence[int] = (1, 10, 100),
    seed: int = 0,
    text_queries: np.ndarray | None = None,
    batch_size: int = 65_536,
) -> dict[str, dict]:
    """Recall@k and queries/s of the image index for text -> image and image -> image queries.

    Queries are a seeded sample of the set's own text and image embeddings, or ``text_queries``
    (already encoded) for text -> image; the truth is exact search over the image embeddings.
    """
    rows = sample_rows(files.count, n_queries, seed)
    depth = min(max(ks), files.count)
    result = {}
    for direction, query_column in DIRECTIONS.items():
        if direction == "text_to_image" and text_queries is not None:
            queries = np.ascontiguousarray(text_queries, dtype=np.float32)
        else:
            queries = gather_rows(files, query_column, rows, batch_size)
        database = (b.vectors for b in iter_vectors(files, DIRECTIONS["image_to_image"], batch_size))
        result[direction] = evaluate_index(image_index, queries, exact_search(queries, database, depth), ks)
    return result
