"""Beam pieces of the dedup job: one read of each embeddings file, then group by hash / band / cluster.

    files --ReadFile--> (sha256, row)  --GroupByKey--> exact.bucket_links                     -> links
                        (phash, row)   --GroupByKey--> star of identical hashes             -> links
                                                       + (band, value) per distinct hash
                                       --GroupByKey--> perceptual.bucket_links              -> links
                        (cluster, rows + vectors) per batch, exact copies dropped (side input)
                                       --GroupByKey--> semantic.compare_cluster             -> links, per-row stats
                        recall pairs of the seeded query rows against this file             -> recall

Each result is a small Arrow table; they are written as Parquet under a work dir (Beam's file sink, so a retried
bundle leaves no duplicate) and ``read_results`` turns them back into the ``Links`` and ``SemanticDuplicates``
the single-machine ``run_dedup`` computes from the same data.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from mmembed.dedup import exact, perceptual, semantic
from mmembed.dedup.config import SemanticConfig
from mmembed.dedup.links import Links, reduce_links, star_links
from mmembed.index.build import resolve_device
from mmembed.index.reader import EmbeddingFiles, read_error

NAMESPACE = "mmembed"  # the embed and index jobs' counter namespace too
VECTORS = "image_embedding"
LINKS, SEMANTIC, RECALL = "links", "semantic", "recall"  # result kinds: work-dir folders and tagged outputs
SHA256, PHASH, CLUSTER = "sha256", "phash", "cluster"
LINKS_SCHEMA = pa.schema(
    [("method", pa.string()), ("left", pa.int64()), ("right", pa.int64()), ("pairs", pa.int64())]
)  # ``pairs`` of one bucket / cluster sits on its first link, 0 on the others: the column sums to the pair count
SEMANTIC_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("top", pa.int64()),  # k-means cluster
        ("part", pa.int64()),  # final part of it after splitting (0 when not split)
        ("nearest", pa.float32()),
        ("centroid_similarity", pa.float32()),
    ]
)
RECALL_SCHEMA = pa.schema([("left", pa.int64()), ("right", pa.int64())])
SCHEMAS = {LINKS: LINKS_SCHEMA, SEMANTIC: SEMANTIC_SCHEMA, RECALL: RECALL_SCHEMA}
TABLE_ROWS = 1 << 20  # rows per written table (one Parquet row group)
_UINT64 = (1 << 64) - 1


@dataclass(frozen=True)
class EmbeddingsFile:
    """One embeddings file as a work item: its rows are global row ids ``start .. start + rows``."""

    path: str
    start: int
    rows: int


@dataclass(frozen=True)
class SemanticPlan:
    """What the launcher computed for the semantic method: k-means ``centroids`` (trained on a seeded sample),
    the in-cluster settings (``config.device`` 'auto' resolves on each worker) and the recall query rows with
    their vectors (None when the recall check is off)."""

    centroids: np.ndarray
    config: SemanticConfig
    recall_rows: np.ndarray | None = None
    recall_vectors: np.ndarray | None = None


def work_items(files: EmbeddingFiles) -> list[EmbeddingsFile]:
    """The non-empty files with their first global row id (from the footers' row counts)."""
    starts = np.cumsum((0, *files.counts))
    return [
        EmbeddingsFile(path, int(start), rows)
        for path, start, rows in zip(files.paths, starts, files.counts, strict=False)
        if rows
    ]


def read_batches(file: EmbeddingsFile, columns: list[str], batch_size: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """(first global row id, batch) over ``columns`` of one file; a corrupt or short file is an
    ``EmbeddingsReadError`` naming it."""
    start = file.start
    try:
        parquet = pq.ParquetFile(file.path)
        missing = [c for c in columns if c not in parquet.schema_arrow.names]
        if missing:
            raise pa.ArrowInvalid(f"columns {missing} missing; written by an older embed job?")
        batches = parquet.iter_batches(batch_size=batch_size, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise read_error(file.path, exc) from exc
    while True:
        try:
            batch = next(batches, None)
        except (OSError, pa.ArrowException) as exc:
            raise read_error(file.path, exc) from exc
        if batch is None:
            break
        yield start, batch
        start += batch.num_rows
    if start != file.start + file.rows:
        raise read_error(file.path, ValueError(f"read {start - file.start} rows, the footer says {file.rows}"))


def links_table(links: Links) -> pa.Table:
    """One bucket's or cluster's links as a table; its pair count rides on the first link."""
    pairs = np.zeros(len(links), dtype=np.int64)
    pairs[:1] = links.pairs
    method = pa.array([links.method] * len(links), pa.string())
    return pa.table({"method": method, "left": links.left, "right": links.right, "pairs": pairs}, schema=LINKS_SCHEMA)


class ReadFileFn(beam.DoFn):
    """One embeddings file -> (sha256, row) and (signed 64-bit phash, row) per row; per batch, (cluster, (rows,
    vectors)) per assigned cluster (vectors in the file's dtype); recall pairs of the query rows in this file."""

    def __init__(self, methods: tuple[str, ...], batch_size: int, plan: SemanticPlan | None) -> None:
        self.methods = methods
        self.batch_size = batch_size
        self.plan = plan
        self.device = "cpu"

    def setup(self) -> None:
        if self.plan is not None:
            self.device = resolve_device(self.plan.config.device)

    def process(self, file: EmbeddingsFile) -> Iterator[Any]:
        columns = [c for m, c in (("exact", "sha256"), ("perceptual", "phash")) if m in self.methods]
        if self.plan is not None:
            columns.append(VECTORS)
        for start, batch in read_batches(file, columns, self.batch_size):
            rows = np.arange(start, start + batch.num_rows, dtype=np.int64)
            if "sha256" in columns:
                for value, row in zip(batch.column("sha256").to_pylist(), rows.tolist(), strict=True):
                    yield beam.pvalue.TaggedOutput(SHA256, (value, row))
            if "phash" in columns:
                codes = perceptual.phash_codes(batch.column("phash")).view(np.int64)  # ints a Beam key coder takes
                for code, row in zip(codes.tolist(), rows.tolist(), strict=True):
                    yield beam.pvalue.TaggedOutput(PHASH, (code, row))
            if self.plan is not None:
                yield from self._vectors(batch.column(VECTORS), rows, start)
        Metrics.counter(NAMESPACE, "dedup_files").inc()
        Metrics.counter(NAMESPACE, "dedup_rows").inc(file.rows)

    def _vectors(self, column: pa.Array, rows: np.ndarray, start: int) -> Iterator[Any]:
        plan = self.plan
        vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(len(rows), -1)  # float16 stays float16
        top, _ = semantic.assign(vectors, plan.centroids, self.device)
        order = np.argsort(top, kind="stable")
        bounds = np.flatnonzero(np.diff(top[order])) + 1
        for chunk in np.split(order, bounds):
            yield beam.pvalue.TaggedOutput(CLUSTER, (int(top[chunk[0]]), (rows[chunk], vectors[chunk])))
        if plan.recall_rows is not None:
            left, right = semantic.block_range_pairs(
                plan.recall_vectors, plan.recall_rows, vectors, start, plan.config.threshold, self.device
            )
            if len(left):
                yield beam.pvalue.TaggedOutput(RECALL, pa.table({"left": left, "right": right}, schema=RECALL_SCHEMA))


def exact_bucket(item: tuple[str, Iterable[int]]) -> Iterator[pa.Table]:
    """One sha256 bucket -> a star of its rows (nothing for a single row)."""
    rows = np.fromiter(item[1], dtype=np.int64)
    if len(rows) > 1:
        Metrics.counter(NAMESPACE, "dedup_exact_buckets").inc()
        yield links_table(exact.bucket_links(rows))


class PerceptualHashFn(beam.DoFn):
    """One pHash value -> a star of the rows holding it (main output), and its first row with the row count
    under each (band, value) key: identical hashes (placeholders, thousands alike) enter the bands once."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def process(self, item: tuple[int, Iterable[int]]) -> Iterator[Any]:
        code, members = item
        rows = np.sort(np.fromiter(members, dtype=np.int64))
        if len(rows) > 1:
            yield links_table(star_links(perceptual.METHOD, rows))
        for key in perceptual.band_keys(code & _UINT64, self.threshold):
            yield beam.pvalue.TaggedOutput(PHASH, (key, (int(rows[0]), code, len(rows))))


def perceptual_bucket(
    item: tuple[tuple[int, int], Iterable[tuple[int, int, int]]], threshold: int
) -> Iterator[pa.Table]:
    """One (band, value) bucket of distinct hashes -> links of the pairs within ``threshold`` that this band owns."""
    (band, _), members = item
    members = list(members)
    if len(members) < 2:
        return
    rows = np.array([m[0] for m in members], dtype=np.int64)
    codes = np.array([m[1] for m in members], dtype=np.int64).view(np.uint64)
    counts = np.array([m[2] for m in members], dtype=np.int64)
    Metrics.counter(NAMESPACE, "dedup_perceptual_buckets").inc()
    links = perceptual.bucket_links(rows, codes, band, threshold, counts)
    if len(links):
        yield links_table(links)


class DropCopiesFn(beam.DoFn):
    """Drop exact copies (right rows of exact links, a side input) from cluster chunks: a copy has its original's
    embedding, so it skips comparison and joins the original's cluster on the launcher, as in ``run_dedup``."""

    def process(self, item: tuple[int, tuple[np.ndarray, np.ndarray]], copies: np.ndarray) -> Iterator[Any]:
        cluster, (rows, vectors) = item
        if len(copies):
            keep = ~np.isin(rows, copies, assume_unique=True)
            rows, vectors = rows[keep], vectors[keep]
        if len(rows):
            yield cluster, (rows, vectors)


class CompareClusterFn(beam.DoFn):
    """One k-means cluster (its chunks, any order) -> links (main output) and per-row stats (``SEMANTIC``):
    rows sorted so splitting and tiles see what ``run_dedup`` sees."""

    def __init__(self, plan: SemanticPlan) -> None:
        self.plan = plan
        self.config = plan.config

    def setup(self) -> None:
        self.config = replace(self.plan.config, device=resolve_device(self.plan.config.device))

    def process(self, item: tuple[int, Iterable[tuple[np.ndarray, np.ndarray]]]) -> Iterator[Any]:
        cluster, chunks = item
        rows_list, vector_list = zip(*chunks, strict=True)
        rows = np.concatenate(rows_list)
        order = np.argsort(rows, kind="stable")
        vectors = np.ascontiguousarray(np.concatenate(vector_list)[order], dtype=np.float32)
        parts = semantic.compare_cluster(vectors, rows[order], self.plan.centroids[cluster], self.config)
        Metrics.counter(NAMESPACE, "dedup_clusters").inc()
        if len(rows) > self.config.max_cluster_size:
            Metrics.counter(NAMESPACE, "dedup_split_clusters").inc()
        for part, (mine, found) in enumerate(parts):
            stats = {
                "row": mine,
                "top": np.full(len(mine), cluster, dtype=np.int64),
                "part": np.full(len(mine), part, dtype=np.int64),
                "nearest": found.nearest,
                "centroid_similarity": found.centroid_similarity,
            }
            yield beam.pvalue.TaggedOutput(SEMANTIC, pa.table(stats, schema=SEMANTIC_SCHEMA))
            if len(found.links):
                yield links_table(found.links)


class _ConcatRows(beam.CombineFn):
    """Int64 arrays -> one sorted array of their distinct values."""

    def create_accumulator(self) -> list[np.ndarray]:
        return []

    def add_input(self, accumulator: list[np.ndarray], rows: np.ndarray) -> list[np.ndarray]:
        accumulator.append(np.asarray(rows, dtype=np.int64))
        return accumulator

    def merge_accumulators(self, accumulators: Iterable[list[np.ndarray]]) -> list[np.ndarray]:
        return [np.concatenate([np.zeros(0, dtype=np.int64), *(a for acc in accumulators for a in acc)])]

    def extract_output(self, accumulator: list[np.ndarray]) -> np.ndarray:
        return np.unique(np.concatenate([np.zeros(0, dtype=np.int64), *accumulator]))


class FindDuplicates(beam.PTransform):
    """PCollection of ``EmbeddingsFile`` -> {LINKS, SEMANTIC, RECALL: PCollection of Arrow tables}; each method
    in ``methods`` runs, semantic (and recall) only with a ``plan``."""

    def __init__(self, methods: tuple[str, ...], phash_threshold: int, batch_size: int, plan: SemanticPlan | None):
        super().__init__()
        self.methods = methods
        self.threshold = phash_threshold
        self.batch_size = batch_size
        self.plan = plan

    def expand(self, files: beam.PCollection) -> dict[str, beam.PCollection]:
        read = (
            files
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFiles"
            >> beam.ParDo(ReadFileFn(self.methods, self.batch_size, self.plan)).with_outputs(
                SHA256, PHASH, CLUSTER, RECALL
            )
        )
        pipeline = files.pipeline
        links, semantic_rows = [], []
        exact_links = None
        if "exact" in self.methods:
            exact_links = (
                read[SHA256] | "GroupBySha256" >> beam.GroupByKey() | "ExactBuckets" >> beam.FlatMap(exact_bucket)
            )
            links.append(exact_links)
        if "perceptual" in self.methods:
            by_hash = (
                read[PHASH]
                | "GroupByPhash" >> beam.GroupByKey()
                | "IdenticalHashes" >> beam.ParDo(PerceptualHashFn(self.threshold)).with_outputs(PHASH, main=LINKS)
            )
            bands = (
                by_hash[PHASH]
                | "GroupByBand" >> beam.GroupByKey()
                | "PerceptualBuckets" >> beam.FlatMap(perceptual_bucket, self.threshold)
            )
            links.extend([by_hash[LINKS], bands])
        if self.plan is not None:
            chunks = read[CLUSTER]
            if exact_links is not None:
                copies = (
                    exact_links
                    | "CopyRows" >> beam.Map(lambda table: table.column("right").to_numpy())
                    | "AllCopies" >> beam.CombineGlobally(_ConcatRows())
                )
                chunks = chunks | "DropCopies" >> beam.ParDo(DropCopiesFn(), beam.pvalue.AsSingleton(copies))
            clusters = (
                chunks
                | "GroupByCluster" >> beam.GroupByKey()
                | "CompareClusters" >> beam.ParDo(CompareClusterFn(self.plan)).with_outputs(SEMANTIC, main=LINKS)
            )
            links.append(clusters[LINKS])
            semantic_rows.append(clusters[SEMANTIC])
        return {
            LINKS: _flatten(pipeline, links, "Links"),
            SEMANTIC: _flatten(pipeline, semantic_rows, "SemanticRows"),
            RECALL: read[RECALL],
        }


def _flatten(pipeline: beam.Pipeline, parts: list[beam.PCollection], label: str) -> beam.PCollection:
    if not parts:
        return pipeline | f"No{label}" >> beam.Create([])
    return tuple(parts) | f"All{label}" >> beam.Flatten()


class _Concat(beam.DoFn):
    """Small tables -> tables of about ``TABLE_ROWS`` rows per bundle, so the sink writes few row groups."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema

    def start_bundle(self) -> None:
        self.tables: list[pa.Table] = []
        self.rows = 0

    def process(self, table: pa.Table) -> Iterator[pa.Table]:
        self.tables.append(table)
        self.rows += table.num_rows
        if self.rows >= TABLE_ROWS:
            yield self._take()

    def finish_bundle(self) -> Iterator[Any]:
        if self.tables:
            yield GlobalWindows.windowed_value(self._take())

    def _take(self) -> pa.Table:
        table = pa.concat_tables(self.tables).cast(self.schema)
        self.tables, self.rows = [], 0
        return table


class WriteResults(beam.PTransform):
    """{kind: PCollection of tables} -> Parquet files ``<work_dir>/<kind>/part-*.parquet``."""

    def __init__(self, work_dir: str) -> None:
        super().__init__()
        self.work_dir = work_dir

    def expand(self, results: dict[str, beam.PCollection]) -> None:
        for kind, tables in results.items():
            schema = SCHEMAS[kind]
            _ = (
                tables
                | f"Concat{kind.title()}" >> beam.ParDo(_Concat(schema))
                | f"Write{kind.title()}"
                >> beam.io.WriteToParquetBatched(
                    os.path.join(self.work_dir, kind, "part"), schema, file_name_suffix=".parquet"
                )
            )


def read_result(work_dir: str, kind: str) -> pa.Table:
    """Every table the job wrote for ``kind`` (empty when it wrote none)."""
    paths = sorted(glob.glob(os.path.join(work_dir, kind, "part*.parquet")))
    tables = [pq.read_table(p, schema=SCHEMAS[kind]) for p in paths]
    return pa.concat_tables(tables) if tables else SCHEMAS[kind].empty_table()


def read_links(work_dir: str, methods: tuple[str, ...]) -> dict[str, Links]:
    """The links of each method, as ``run_dedup`` builds them: exact stars per hash, perceptual reduced to one
    star forest (the pairs come bucket by bucket), semantic forests per final cluster."""
    table = read_result(work_dir, LINKS)
    method = table.column("method").to_numpy(zero_copy_only=False)
    left, right, pairs = (table.column(c).to_numpy() for c in ("left", "right", "pairs"))
    found = {}
    for name in methods:
        mine = method == name
        links = Links(name, left[mine], right[mine], int(pairs[mine].sum()))
        found[name] = reduce_links(links) if name == perceptual.METHOD else links
    return found


def read_semantic(
    work_dir: str, count: int, plan: SemanticPlan, links: Links, identical: Links | None
) -> semantic.SemanticDuplicates:
    """Per-row semantic results of every cluster -> the whole set's, as ``semantic.deduplicate_clusters``."""
    table = read_result(work_dir, SEMANTIC)
    columns = {name: table.column(name).to_numpy() for name in SEMANTIC_SCHEMA.names}
    return semantic.semantic_result(
        count,
        columns["row"],
        columns["top"],
        columns["part"],
        columns["nearest"],
        columns["centroid_similarity"],
        links,
        len(plan.centroids),
        plan.config,
        identical,
    )


def read_recall_pairs(work_dir: str) -> tuple[np.ndarray, np.ndarray]:
    table = read_result(work_dir, RECALL)
    return table.column("left").to_numpy(), table.column("right").to_numpy()
