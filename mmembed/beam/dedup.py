"""Beam pieces of the dedup job: one read of each embeddings file, then group by hash / band / cluster.

    files --ReadFile--> (sha256, row)  --GroupByKey--> exact.bucket_links                     -> links
                        (phash, row)   --GroupByKey--> star of identical hashes             -> links
                                                       + (band, value) per distinct hash
                                       --GroupByKey--> perceptual.bucket_links              -> links
                        (cluster, rows + vectors) per batch, exact copies dropped (side input)
                                       --GroupByKey--> semantic.compare_cluster             -> links, per-row stats
                        recall pairs of the seeded query rows against this file             -> recall

Each result is a small Arrow table; they are written as Parquet under a work dir through ``mmembed.storage``
(a local path or an object-store URL that the launcher and every worker reach) and listed in a manifest that
names only the files of committed bundles, so a retried bundle leaves no duplicate; ``read_links`` and
``read_semantic`` turn them back into the ``Links`` and ``SemanticDuplicates`` the single-machine ``run_dedup``
computes from the same data.

The job graph holds settings and URLs only: the work-item list and the semantic plan's arrays (k x dim
centroids, the recall query vectors), which grow with the data, are written to the work dir by ``stage_job``
and loaded by the workers in ``setup``, once per process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.shared import Shared

from mmembed import storage
from mmembed.dedup import exact, perceptual, semantic
from mmembed.dedup.config import DedupConfig, SemanticConfig
from mmembed.dedup.links import Links, reduce_links, star_links
from mmembed.dedup.outputs import write_parquet
from mmembed.index.build import resolve_device
from mmembed.index.reader import EmbeddingFiles, iter_columns, read_error

log = logging.getLogger(__name__)

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
ITEMS_FILE, PLAN_FILE, MANIFEST_FILE = "files.json", "semantic-plan.npz", "manifest.json"  # in the work dir
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


@dataclass(frozen=True)
class PlanFile:
    """Where ``stage_job`` stored a ``SemanticPlan``'s arrays (one ``.npz``), with its small settings: what the
    job graph holds instead of the arrays."""

    url: str
    config: SemanticConfig


@dataclass(frozen=True)
class DedupJob:
    """Everything the job graph holds: the work dir, the URL of the work-item list, the per-method settings and
    the semantic plan's file (None: no semantic method)."""

    work_dir: str
    items: str
    methods: tuple[str, ...]
    phash_threshold: int
    batch_size: int
    plan: PlanFile | None = None


def work_items(files: EmbeddingFiles) -> list[EmbeddingsFile]:
    """The non-empty files with their first global row id (from the footers' row counts)."""
    starts = np.cumsum((0, *files.counts))
    return [
        EmbeddingsFile(path, int(start), rows)
        for path, start, rows in zip(files.paths, starts, files.counts, strict=False)
        if rows
    ]


def stage_job(work_dir: str, files: EmbeddingFiles, config: DedupConfig, plan: SemanticPlan | None) -> DedupJob:
    """Write what grows with the data (the work items of ``files``, the plan's arrays) into ``work_dir``; the
    job that reads them back."""
    items = storage.join(work_dir, ITEMS_FILE)
    storage.write_bytes(items, json.dumps([asdict(item) for item in work_items(files)]).encode())
    plan_file = save_plan(plan, storage.join(work_dir, PLAN_FILE)) if plan is not None else None
    return DedupJob(work_dir, items, config.methods, config.phash_threshold, config.batch_size, plan_file)


def load_work_items(url: str) -> list[EmbeddingsFile]:
    """The work items ``stage_job`` wrote to ``url``."""
    return [EmbeddingsFile(**item) for item in json.loads(storage.read_bytes(url))]


def save_plan(plan: SemanticPlan, url: str) -> PlanFile:
    """Write the plan's arrays to ``url`` (an uncompressed ``.npz``, built in memory: it is a few MB at most)."""
    arrays = {"centroids": plan.centroids}
    if plan.recall_rows is not None:
        arrays.update(recall_rows=plan.recall_rows, recall_vectors=plan.recall_vectors)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    storage.write_bytes(url, buffer.getvalue())
    return PlanFile(url, plan.config)


def read_plan(plan_file: PlanFile) -> SemanticPlan:
    """The plan ``save_plan`` wrote (arrays read-only: one copy serves every thread of a worker)."""
    with np.load(io.BytesIO(storage.read_bytes(plan_file.url)), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    for array in arrays.values():
        array.setflags(write=False)
    return SemanticPlan(arrays["centroids"], plan_file.config, arrays.get("recall_rows"), arrays.get("recall_vectors"))


def load_plan(plan_file: PlanFile, handle: Shared) -> SemanticPlan:
    """The plan of ``plan_file``, read once per worker process and shared by its DoFn instances (``handle``)."""
    return handle.acquire(lambda: read_plan(plan_file), tag=plan_file.url)


def read_batches(file: EmbeddingsFile, columns: list[str], batch_size: int) -> Iterator[tuple[int, pa.Table]]:
    """(first global row id, batch) over ``columns`` of one file, read by the index reader; a corrupt or short
    file is an ``EmbeddingsReadError`` naming it."""
    single = EmbeddingFiles((file.path,), (file.rows,), 0, {})  # iter_columns reads paths and counts only
    start = file.start
    for batch in iter_columns(single, columns, batch_size):
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

    def __init__(self, job: DedupJob, handle: Shared) -> None:
        self.methods = job.methods
        self.batch_size = job.batch_size
        self.plan_file = job.plan
        self.handle = handle
        self.plan: SemanticPlan | None = None
        self.device = "cpu"

    def setup(self) -> None:
        if self.plan_file is not None:
            self.plan = load_plan(self.plan_file, self.handle)
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

    def _vectors(self, column: pa.ChunkedArray, rows: np.ndarray, start: int) -> Iterator[Any]:
        plan = self.plan
        values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = values.reshape(len(rows), -1)  # float16 stays float16
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

    def __init__(self, plan_file: PlanFile, handle: Shared) -> None:
        self.plan_file = plan_file
        self.handle = handle
        self.config = plan_file.config

    def setup(self) -> None:
        self.centroids = load_plan(self.plan_file, self.handle).centroids
        self.config = replace(self.plan_file.config, device=resolve_device(self.plan_file.config.device))

    def process(self, item: tuple[int, Iterable[tuple[np.ndarray, np.ndarray]]]) -> Iterator[Any]:
        cluster, chunks = item
        rows_list, vector_list = zip(*chunks, strict=True)
        rows = np.concatenate(rows_list)
        order = np.argsort(rows, kind="stable")
        vectors = np.ascontiguousarray(np.concatenate(vector_list)[order], dtype=np.float32)
        parts = semantic.compare_cluster(vectors, rows[order], self.centroids[cluster], self.config)
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


class ReadWorkItems(beam.PTransform):
    """The work items ``stage_job`` wrote to ``url`` as a PCollection of ``EmbeddingsFile`` (the graph holds
    the URL, not the list)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def expand(self, pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        return pipeline | "Url" >> beam.Create([self.url]) | "Load" >> beam.FlatMap(load_work_items)


class FindDuplicates(beam.PTransform):
    """PCollection of ``EmbeddingsFile`` -> {LINKS, SEMANTIC, RECALL: PCollection of Arrow tables}; each method
    of ``job.methods`` runs, semantic (and recall) only with a plan."""

    def __init__(self, job: DedupJob) -> None:
        super().__init__()
        self.job = job
        self.methods = job.methods
        self.threshold = job.phash_threshold
        self.plan = job.plan
        self.handle = Shared()  # one plan per worker process, for both DoFns that need it

    def expand(self, files: beam.PCollection) -> dict[str, beam.PCollection]:
        read = (
            files
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFiles" >> beam.ParDo(ReadFileFn(self.job, self.handle)).with_outputs(SHA256, PHASH, CLUSTER, RECALL)
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
                | "CompareClusters"
                >> beam.ParDo(CompareClusterFn(self.plan, self.handle)).with_outputs(SEMANTIC, main=LINKS)
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


class WriteTablesFn(beam.DoFn):
    """Tables of one result kind -> Parquet files of about ``TABLE_ROWS`` rows in ``<work_dir>/<kind>/``, each
    under a name no other attempt uses, written through ``storage.write_atomic``; yields (kind, URL) per file.

    A runner drops the outputs of a failed bundle, so the URLs that reach ``WriteManifest`` are exactly the
    committed files (Beam's file sink does the same with temporary files and a finalize step); a failed
    attempt's files stay unnamed and go with the work dir.
    """

    def __init__(self, work_dir: str, kind: str) -> None:
        self.folder = storage.join(work_dir, kind)
        self.kind = kind

    def start_bundle(self) -> None:
        self.tables: list[pa.Table] = []
        self.rows = 0

    def process(self, table: pa.Table) -> Iterator[tuple[str, str]]:
        self.tables.append(table)
        self.rows += table.num_rows
        if self.rows >= TABLE_ROWS:
            yield self._write()

    def finish_bundle(self) -> Iterator[Any]:
        if self.tables:
            yield GlobalWindows.windowed_value(self._write())

    def _write(self) -> tuple[str, str]:
        table = pa.concat_tables(self.tables).cast(SCHEMAS[self.kind])
        self.tables, self.rows = [], 0
        url = storage.join(self.folder, f"part-{uuid.uuid4().hex}.parquet")
        write_parquet(url, table)
        return self.kind, url


def write_manifest(written: list[tuple[str, str]], work_dir: str) -> None:
    """The committed result files by kind, as ``<work_dir>/manifest.json`` (written last: the job's end mark)."""
    manifest: dict[str, list[str]] = {kind: [] for kind in SCHEMAS}
    for kind, url in written:
        manifest[kind].append(url)
    text = json.dumps({kind: sorted(urls) for kind, urls in manifest.items()}, indent=1)
    storage.write_bytes(storage.join(work_dir, MANIFEST_FILE), text.encode())


class WriteResults(beam.PTransform):
    """{kind: PCollection of tables} -> Parquet files under ``<work_dir>/<kind>/`` and the manifest naming them."""

    def __init__(self, work_dir: str) -> None:
        super().__init__()
        self.work_dir = work_dir

    def expand(self, results: dict[str, beam.PCollection]) -> beam.PCollection:
        written = [
            tables | f"Write{kind.title()}" >> beam.ParDo(WriteTablesFn(self.work_dir, kind))
            for kind, tables in results.items()
        ]
        return (
            tuple(written)
            | "AllWritten" >> beam.Flatten()
            | "ListWritten" >> beam.combiners.ToList()
            | "WriteManifest" >> beam.Map(write_manifest, self.work_dir)
        )


def add_dedup_job(pipeline: beam.Pipeline, job: DedupJob) -> None:
    """The whole dedup job on ``pipeline``: work items -> duplicates found -> result files and manifest."""
    _ = (
        pipeline
        | "Files" >> ReadWorkItems(job.items)
        | "FindDuplicates" >> FindDuplicates(job)
        | "WriteResults" >> WriteResults(job.work_dir)
    )


@contextlib.contextmanager
def work_folder(base: str) -> Iterator[str]:
    """A fresh folder under ``base`` for one run's intermediate files (the launcher and every worker must reach
    it), removed afterwards: a temporary directory on a local disk, a unique prefix on an object store."""
    if storage.is_local(base):
        storage.make_dirs(base)
        with tempfile.TemporaryDirectory(prefix="dedup-work-", dir=storage.local_path(base)) as work:
            yield work
        return
    work = storage.join(base, f"dedup-work-{uuid.uuid4().hex}")
    try:
        yield work
    finally:
        try:
            storage.delete(storage.glob(storage.join(work, "**")))
        except OSError as exc:  # never hide the job's own error; the leftovers are only intermediate files
            log.warning("could not remove the dedup work dir %s (%s); delete it by hand", work, exc)


def read_result(work_dir: str, kind: str) -> pa.Table:
    """Every table the job committed for ``kind`` (empty when it wrote none), as its manifest lists them."""
    manifest = json.loads(storage.read_bytes(storage.join(work_dir, MANIFEST_FILE)))
    tables = []
    for url in manifest[kind]:
        with storage.open_read(url) as f:
            tables.append(pq.read_table(f, schema=SCHEMAS[kind]))
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
