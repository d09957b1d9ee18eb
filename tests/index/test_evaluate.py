"""evaluate.py: exact search over batches, k-recall@k, and the recall report of a whole index."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from mmembed.index.evaluate import exact_search, recall_at_k, sample_rows
from mmembed.index.reader import VectorBatch, open_embeddings
from tests.helpers import evaluate_recall
from tests.index.synth import blobs, exact_top_k, write_embed_dir


def test_exact_search_over_batches_matches_numpy() -> None:
    base = blobs(500, 16, seed=21)
    queries = base[::25]
    batches = [VectorBatch(i, base[i : i + 60]) for i in range(0, 500, 60)]  # k larger than the last batch
    found = exact_search(queries, batches, 64)
    np.testing.assert_array_equal(found, exact_top_k(base, queries, 64))


def test_exact_search_skips_rows_a_batch_marks_absent() -> None:
    """Absent rows (image-only samples' zero text vectors) are never neighbours, and the others keep their ids."""
    base = blobs(500, 16, seed=23)
    present = np.random.default_rng(24).random(500) < 0.5
    base[~present] = 0
    queries = -base[present][:10]  # about half the present rows score below a zero vector's 0
    batches = [VectorBatch(i, base[i : i + 60], present=present[i : i + 60]) for i in range(0, 500, 60)]
    found = exact_search(queries, batches, 200)
    rows = np.flatnonzero(present)
    np.testing.assert_array_equal(found, rows[exact_top_k(base[rows], queries, 200)])
    assert (~present[exact_top_k(base, queries, 200)]).any()  # unfiltered, zero rows would be among them


def test_recall_at_k_counts_overlap_and_ignores_missing() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, 9, -1], [5, 6, 7, 8]])
    assert recall_at_k(found, truth, 4) == (2 / 4 + 4 / 4) / 2
    assert recall_at_k(found, truth, 1) == 0.5


def test_sample_rows_within_a_subset_of_rows() -> None:
    within = np.flatnonzero(np.arange(1000) % 3 == 0)
    picked = sample_rows(1000, 40, seed=5, within=within)
    assert set(picked) <= set(within) and len(picked) == 40 and np.all(np.diff(picked) > 0)
    held_out = sample_rows(1000, 40, seed=6, exclude=picked, within=within)
    assert set(held_out) <= set(within) and not set(held_out) & set(picked)
    np.testing.assert_array_equal(sample_rows(1000, 40, 5), sample_rows(1000, 40, 5, within=np.arange(1000)))


def test_sample_rows_is_seeded_sorted_and_avoids_exclusions() -> None:
    a, b = sample_rows(1000, 50, seed=3), sample_rows(1000, 50, seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.diff(a) > 0)
    held_out = sample_rows(1000, 100, seed=4, exclude=a)
    assert not set(held_out) & set(a)
    assert len(sample_rows(60, 50, seed=4, exclude=a[:20])) == 50  # too few left: overlap allowed


def test_evaluate_recall_of_an_index(tmp_path: Path) -> None:
    image = blobs(800, 16, seed=22)
    write_embed_dir(tmp_path, image, image, per_shard=300)
    files = open_embeddings(str(tmp_path))
    flat = faiss.IndexFlatIP(16)
    flat.add(image)
    report = evaluate_recall(flat, files, "image_embedding", n_queries=100, seed=1, batch_size=128)
    assert report["recall@1"] == report["recall@10"] == report["recall@100"] == 1.0
    assert report["queries"] == 100 and report["queries_per_second"] > 0
    hnsw = faiss.IndexHNSWFlat(16, 4, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efSearch = 4
    hnsw.add(image)
    rough = evaluate_recall(hnsw, files, "image_embedding", n_queries=100, seed=1)
    assert rough["recall@100"] < 1.0
