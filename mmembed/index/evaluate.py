"""Measure an index against exact search: seeded self-queries, k-recall@k and queries per second.

Only rows that hold a vector count: an image-only row's zero text vector is neither a query nor a neighbour,
and the text index is searched with the same ``RowFilter`` that every text-index search uses.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import faiss
import numpy as np

from mmembed.index.reader import VECTOR_COLUMNS, EmbeddingFiles, VectorBatch, gather_rows, iter_vectors, vector_rows
from mmembed.index.selection import NO_TEXT, RowFilter, search


def sample_rows(
    count: int, size: int, seed: int, exclude: np.ndarray | None = None, within: np.ndarray | None = None
) -> np.ndarray:
    """``size`` sorted row ids drawn without replacement from ``within`` (sorted row ids; default all ``count``
    rows), avoiding ``exclude`` while enough rows remain."""
    rng = np.random.default_rng(seed)
    pool = np.arange(count, dtype=np.int64) if within is None else np.asarray(within, dtype=np.int64)
    if exclude is not None and len(pool) - len(exclude) >= size:
        pool = np.setdiff1d(pool, exclude, assume_unique=True)
    return np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))


def batch_neighbours(
    queries: np.ndarray, batch: VectorBatch, k: int, first: int, resources: Any = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact inner-product top-k of ``queries`` among the batch's present rows: (scores, global row ids, -1
    where none), ``first`` being the global id of the batch's row 0; None when no row of it holds a vector."""
    rows = np.arange(len(batch.vectors)) if batch.present is None else np.flatnonzero(batch.present)
    if not len(rows):
        return None
    block = batch.vectors if batch.present is None else np.ascontiguousarray(batch.vectors[rows])
    kk = min(k, len(block))
    if resources is not None:
        scores, ids = faiss.knn_gpu(resources, queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        scores, ids = faiss.knn(queries, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, np.where(ids >= 0, rows[np.maximum(ids, 0)] + first, -1)


def exact_search(queries: np.ndarray, batches: Iterable[VectorBatch], k: int, device: str = "cpu") -> np.ndarray:
    """Exact inner-product top-k row ids of ``queries`` over database batches (bounded memory; rows a batch
    marks absent are skipped), like faiss' ``contrib.exhaustive_search.knn_ground_truth``; on GPU when
    ``device`` is 'cuda'."""
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    resources = faiss.StandardGpuResources() if device == "cuda" else None
    for batch in batches:
        found = batch_neighbours(queries, batch, k, batch.start, resources)
        if found is not None:
            heap.add_result(*found)
    heap.finalize()
    return heap.I


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k found in the index's top-k (k-recall@k); -1 ids never count."""
    k = min(k, truth.shape[1], found.shape[1])
    hits = [len(np.intersect1d(f[:k][f[:k] >= 0], t[:k])) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k) if hits else 0.0


def evaluate_index(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    ks: Sequence[int] = (1, 10, 100),
    allowed: RowFilter | None = None,
) -> dict:
    """recall@k for each k (capped at the truth's depth) and queries/s of one timed search at max(k), over
    the rows ``allowed`` admits."""
    depth = min(max(ks), truth.shape[1])
    began = time.perf_counter()
    _, found = search(index, queries, depth, allowed)
    seconds = time.perf_counter() - began
    result = {f"recall@{k}": round(recall_at_k(found, truth, k), 4) for k in ks if k <= depth}
    result["queries"] = len(queries)
    result["queries_per_second"] = round(len(queries) / seconds, 1) if seconds > 0 else None
    return result


# eval-index directions: query column; both search the image index.
DIRECTIONS = {"text_to_image": VECTOR_COLUMNS["text"], "image_to_image": VECTOR_COLUMNS["image"]}


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

    Queries are a seeded sample of the set's own text and image embeddings (text from rows that hold a text
    vector), or ``text_queries`` (already encoded) for text -> image; the truth is exact search over the image
    embeddings. Without text vectors or ``text_queries``, text -> image is ``{"available": False, "reason"}``.
    """
    depth = min(max(ks), files.count)
    result: dict[str, dict] = {}
    for direction, query_column in DIRECTIONS.items():
        if direction == "text_to_image" and text_queries is not None:
            queries = np.ascontiguousarray(text_queries, dtype=np.float32)
        else:
            present = vector_rows(files, query_column, batch_size)
            if not len(present):
                result[direction] = {"available": False, "reason": NO_TEXT}
                continue
            rows = sample_rows(files.count, n_queries, seed, within=present)
            queries = gather_rows(files, query_column, rows, batch_size)
        truth = exact_search(queries, iter_vectors(files, DIRECTIONS["image_to_image"], batch_size), depth)
        result[direction] = evaluate_index(image_index, queries, truth, ks)
    return result
