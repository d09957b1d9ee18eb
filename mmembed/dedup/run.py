"""Single-machine dedup of one embed output dir: exact, perceptual and semantic links -> groups -> keep list.

The embeddings and the out dir are local paths or object-store URLs (``mmembed.storage``). Memory: the small
per-row columns (ids, hashes, keep inputs) plus a few numbers per row; vectors go once from Parquet into a
local memmap (in ``work_dir``, a local out dir, or the system temp dir; removed afterwards) and are read back
one cluster at a time. Every output is written atomically and summary.json last, so its presence marks a
complete run.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.dedup import exact, perceptual, semantic
from mmembed.dedup.columns import numeric, read_columns
from mmembed.dedup.config import DedupConfig
from mmembed.dedup.groups import (
    Groups,
    NearTests,
    build_groups,
    choose_kept,
    keep_score,
    kept_mask,
    method_counts,
    similarity_to_kept,
    sort_rank,
    split_chains,
)
from mmembed.dedup.links import Links
from mmembed.dedup.outputs import (
    DUPLICATES_FILE,
    HISTOGRAM_FILE,
    KEEP_FILE,
    OUTPUT_FILES,
    SUMMARY_FILE,
    duplicates_table,
    keep_table,
    write_histogram,
    write_parquet,
    write_summary,
)
from mmembed.dedup.store import VectorStore
from mmembed.index.build import resolve_device
from mmembed.index.evaluate import sample_rows
from mmembed.index.reader import EmbeddingFiles, gather_rows, iter_vectors, open_embeddings
from mmembed.progress import Progress, phase

log = logging.getLogger(__name__)
VECTORS = "image_embedding"
GATHER_CHUNK = 131_072  # members per similarity_to_kept fetch: <= 2 x this many vectors in memory (0.5 GB at 512-d)


def run_dedup(config: DedupConfig) -> dict[str, Any]:
    """Find duplicate groups with ``config.methods``, keep one per group, write the outputs; returns the summary."""
    began = time.perf_counter()
    files = open_embeddings(config.embeddings_dir)
    config = config.for_embeddings(files.provenance)
    device = resolve_device(config.device) if "semantic" in config.methods else "cpu"
    work_parent = local_work_dir(config)
    out = prepare_out(config)
    columns = read_columns(files, batch_size=config.batch_size)
    count = files.count
    links: list[Links] = []
    if "exact" in config.methods:
        links.append(exact.exact_links(columns["sha256"]))
    if "perceptual" in config.methods:
        links.append(perceptual.perceptual_links(perceptual.phash_codes(columns["phash"]), config.phash_threshold))
    log.info("dedup of %d rows: %s", count, ", ".join(f"{x.method} {x.pairs} pairs" for x in links) or "no hash pass")
    with tempfile.TemporaryDirectory(prefix="dedup-work-", dir=work_parent) as work:
        store = VectorStore(work, count, files.dim) if "semantic" in config.methods and count else None
        sem = None
        if store is not None:
            sem = semantic_pass(files, store, config, device, links[0] if "exact" in config.methods else None)
            links.append(sem.links)
        vectors_of = store.take if store is not None else _gatherer(files, config.batch_size)
        try:
            return finish(config, files, out, columns, links, sem, vectors_of, device, began)
        finally:
            if store is not None:
                store.close()


def finish(
    config: DedupConfig,
    files: EmbeddingFiles,
    out: str,
    columns: pa.Table,
    links: list[Links],
    sem: semantic.SemanticDuplicates | None,
    vectors_of: Callable[[np.ndarray], np.ndarray],
    device: str,
    began: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything after the links, shared by ``run_dedup`` and the Beam job so both write identical outputs:
    groups, keep policy, each member's cosine to its kept row (``vectors_of(sorted rows)``), the histogram,
    duplicates.parquet, keep.parquet and summary.json (last, with ``extra`` keys); returns the summary."""
    count = files.count
    rank = sort_rank(columns["shard"], columns["key"])
    components = build_groups(count, links, rank)
    image_text = numeric(columns, "similarity")  # NaN: image-only sample
    if config.keep == "similarity" and count and np.isnan(image_text).all():
        log.warning(
            "keep=similarity: no row has an image-text similarity (embedded without captions), so each group "
            "keeps its smallest (shard, key); --keep resolution ranks image-only data by pixels"
        )
    score = keep_score(
        config.keep,
        rank=rank,
        similarity=image_text,
        width=numeric(columns, "width"),
        height=numeric(columns, "height"),
        centroid_similarity=sem.centroid_similarity if sem else np.full(count, np.nan, dtype=np.float32),
    )
    groups = split_chains(components, score, rank, near_tests(config, columns, vectors_of))
    kept = choose_kept(groups, score, rank)
    similarity = similarity_to_kept(groups, kept, vectors_of, GATHER_CHUNK)
    histogram = None
    if sem is not None:
        source = "within k-means clusters"
        histogram = write_histogram(storage.join(out, HISTOGRAM_FILE), sem.nearest, config.eps, source)
    keep = kept_mask(groups, kept)
    _write_tables(out, columns, groups, keep, similarity)
    summary = _summary(config, files, groups, keep, links, sem, histogram, device, time.perf_counter() - began)
    summary.update(extra or {})
    write_summary(storage.join(out, SUMMARY_FILE), summary)
    log.info(
        "dedup: %d groups, %d of %d rows removed (%.2f%%)",
        groups.count,
        summary["removed"],
        count,
        100 * summary["share_removed"],
    )
    return summary


def near_tests(config: DedupConfig, columns: pa.Table, vectors_of: Callable[[np.ndarray], np.ndarray]) -> NearTests:
    """What makes a row a near-duplicate of a kept row, for the methods of ``config``."""
    return NearTests(
        sha256=exact.hash_codes(columns["sha256"]) if "exact" in config.methods else None,
        phash=perceptual.phash_codes(columns["phash"]) if "perceptual" in config.methods else None,
        phash_threshold=config.phash_threshold,
        vectors_of=vectors_of if "semantic" in config.methods else None,
        cosine_above=config.semantic("cpu").threshold,
    )


def semantic_pass(
    files: EmbeddingFiles, store: VectorStore, config: DedupConfig, device: str, identical: Links | None = None
) -> semantic.SemanticDuplicates:
    """k-means on a seeded sample, every row assigned while its vector is copied to ``store`` (the one pass over
    the Parquet vectors), then pairs per final cluster read back from the store; plus the pair recall."""
    count, params = files.count, config.semantic(device)
    k = cluster_count(config, count)
    sample = gather_rows(files, VECTORS, train_sample(config, count, k), config.batch_size)
    with phase(f"dedup: k-means, {k:,} clusters", len(sample), "vectors"):
        centroids = semantic.train_centroids(sample, k, config.seed, config.kmeans_iterations, device)
    del sample
    top = np.empty(count, dtype=np.int64)
    with Progress("dedup: assign", count, "rows") as progress:
        for batch in progress.track(iter_vectors(files, VECTORS, config.batch_size), lambda b: len(b.vectors)):
            store.write(batch.start, batch.vectors)
            top[batch.start : batch.start + len(batch.vectors)], _ = semantic.assign(batch.vectors, centroids, device)
    copies = len(np.unique(identical.right)) if identical is not None else 0  # they join their original's cluster
    with Progress("dedup: compare", count - copies, "rows") as progress:
        found = semantic.deduplicate_clusters(counted(store.take, progress), top, centroids, params, identical)
    found.stats.update(device=device, **_recall(store, found.clusters, config, device))
    return found


def _recall(store: VectorStore, clusters: np.ndarray, config: DedupConfig, device: str) -> dict[str, Any]:
    """Pair recall of the clustered search vs exact range search over all rows, for a seeded sample of rows."""
    rows = recall_sample(config, store.count)
    if rows is None:
        return {"pair_recall": None}
    with Progress("dedup: recall check", store.count, "rows") as progress:
        blocks = progress.track(store.blocks(config.batch_size), len)
        left, right = semantic.range_pairs(store.take(rows), rows, blocks, config.threshold, device)
    return recall_stats(clusters, rows, left, right)


def counted(vectors_of: Callable[[np.ndarray], np.ndarray], progress: Progress) -> Callable[[np.ndarray], np.ndarray]:
    """``vectors_of`` that advances ``progress`` by the rows each call fetches."""

    def fetch(rows: np.ndarray) -> np.ndarray:
        vectors = vectors_of(rows)
        progress.advance(len(rows))
        return vectors

    return fetch


def cluster_count(config: DedupConfig, count: int) -> int:
    """k of the top-level k-means: ``n_clusters`` or ~sqrt(rows), at most one per row."""
    return min(config.n_clusters or semantic.auto_clusters(count), count)


def train_sample(config: DedupConfig, count: int, k: int) -> np.ndarray:
    """The seeded rows k-means trains on (sorted)."""
    return sample_rows(count, min(count, max(config.sample_size, k)), config.seed)


def recall_sample(config: DedupConfig, count: int) -> np.ndarray | None:
    """The seeded query rows of the pair-recall check (sorted), None when it is off or there are no rows."""
    if config.recall_queries == 0 or count == 0:
        return None
    return sample_rows(count, min(count, config.recall_queries), config.seed + 1)


def recall_stats(clusters: np.ndarray, rows: np.ndarray, left: np.ndarray, right: np.ndarray) -> dict[str, Any]:
    """Summary fields of the recall check from the true pairs (``left`` in ``rows``) and each row's final cluster."""
    recall = semantic.pair_recall(clusters, left, right)
    log.info("semantic pair recall %.4f over %d true pairs of %d sampled rows", recall, len(left), len(rows))
    return {"pair_recall": round(recall, 6), "recall_queries": len(rows), "recall_true_pairs": len(left)}


def _gatherer(files: EmbeddingFiles, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Vectors of sorted rows straight from Parquet (one pass over the files holding them per call)."""
    return lambda rows: gather_rows(files, VECTORS, rows, batch_size)


def prepare_out(config: DedupConfig) -> str:
    """The out dir (a local one created and checked writable); existing outputs refused unless ``overwrite``
    (then removed, so none goes stale)."""
    out = config.out_dir
    existing = [name for name in OUTPUT_FILES if storage.exists(storage.join(out, name))]
    if existing and not config.overwrite:
        raise ConfigError(
            f"{out} already holds dedup outputs ({', '.join(existing)}); fix: add --overwrite to replace them, "
            "or pass another --out"
        )
    # a re-run must not leave a stale file the new methods do not write (the histogram)
    storage.delete([storage.join(out, name) for name in existing])
    storage.check_writable(out)
    if config.work_dir:
        storage.make_dirs(config.work_dir)
    return out


def local_work_dir(config: DedupConfig) -> str | None:
    """Where the single-machine run keeps its vector memmap: ``work_dir``, else a local out dir, else the system
    temp dir (None); a memmap needs a local disk, so an object-store ``work_dir`` is refused."""
    if config.work_dir and not storage.is_local(config.work_dir):
        raise ConfigError(
            f"--work-dir {config.work_dir}: the single-machine dedup maps vectors from a local disk; give a local "
            "folder (an object-store --work-dir is for --beam)"
        )
    if config.work_dir:
        return storage.local_path(config.work_dir)
    out = config.out_dir
    return storage.local_path(out) if storage.is_local(out) else None


def _write_tables(out: str, columns: pa.Table, groups: Groups, keep: np.ndarray, similarity: np.ndarray) -> None:
    members = groups.members
    key, shard = columns["key"], columns["shard"]
    table = duplicates_table(
        key, shard, members, groups.group[members], keep[members], groups.methods[members], similarity
    )
    write_parquet(storage.join(out, DUPLICATES_FILE), table)
    write_parquet(storage.join(out, KEEP_FILE), keep_table(key, shard, keep))


def _summary(
    config: DedupConfig,
    files: EmbeddingFiles,
    groups: Groups,
    keep: np.ndarray,
    links: list[Links],
    sem: semantic.SemanticDuplicates | None,
    histogram: dict[str, Any] | None,
    device: str,
    seconds: float,
) -> dict[str, Any]:
    """Counts that reconcile: samples = kept + removed; duplicates = groups + removed."""
    count, removed = len(keep), int(np.count_nonzero(~keep))
    by_method = method_counts(groups, ~keep, config.methods)
    for link in links:
        by_method[link.method].update(pairs=int(link.pairs), links=len(link))
    summary: dict[str, Any] = {
        "samples": count,
        "groups": groups.count,
        "duplicates": len(groups.members),
        "removed": removed,
        "kept": count - removed,
        "share_removed": round(removed / count, 6) if count else 0.0,
        "keep_policy": config.keep,
        "methods": by_method,
        "embeddings_files": len(files.paths),
        "model": files.provenance.get("model"),
        "outputs": {"duplicates": DUPLICATES_FILE, "keep": KEEP_FILE, "histogram": histogram},
        "device": device,
        "seconds": round(seconds, 3),
        "config": dataclasses.asdict(config),
    }
    if "perceptual" in config.methods:
        summary["perceptual"] = {"threshold_bits": config.phash_threshold, "bands": config.phash_threshold + 1}
    if sem is not None:
        summary["semantic"] = sem.stats
    return summary
