"""Sharded IVF build for data beyond one machine: train once, fill copies of the trained index part by part
(in parallel), then merge the parts' inverted lists into one on-disk ``.ivfdata`` file (faiss ``merge_ondisk``).

``build_sharded(config, run_parts)`` does it all; ``run_parts(job, parts)`` must call ``add_part(job, part)``
for every part (Beam runs them in parallel in ``pipelines/build_index.py``; the default is a plain loop).
Training and the tuning queries use the same seeded samples as ``build_index``, so on the same data both
builds train identical indexes and hold the same vectors under the same row ids; image-only rows are handled
the same way too (zero placeholders in the text index, never returned: ``mmembed.index.selection``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from mmembed.config import ConfigError
from mmembed.index.build import new_index, resolve_device, train
from mmembed.index.choose import IndexChoice, choose_index, estimate_memory
from mmembed.index.config import IndexBuildConfig
from mmembed.index.evaluate import batch_neighbours, evaluate_index
from mmembed.index.job import EVAL_KS, for_each_index, peak_memory_bytes, sample_plan, text_infos
from mmembed.index.reader import VECTOR_COLUMNS, EmbeddingFiles, gather_rows, iter_ids, iter_vectors, open_embeddings
from mmembed.index.selection import modality_filter
from mmembed.index.store import (
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILES,
    atomic_path,
    prepare_dir,
    read_index,
    read_text_mask,
    write_ids,
    write_index,
    write_infos,
)
from mmembed.index.tune import tune

log = logging.getLogger(__name__)
WORK_DIR = "_parts"  # under out_dir: trained indexes, tuning queries and parts; removed once the index is complete
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class ShardedBuildConfig:
    """An ``IndexBuildConfig`` plus ``files_per_part``: how many embeddings files one parallel work item adds."""

    index: IndexBuildConfig
    files_per_part: int = 1

    def __post_init__(self) -> None:
        if self.files_per_part < 1:
            raise ConfigError(f"files_per_part must be >= 1, got {self.files_per_part}")
        if self.index.family not in ("auto", "ivfpq"):
            raise ConfigError(
                f"a sharded build merges IVF inverted lists; family {self.index.family!r} has none: "
                "use family 'ivfpq' (or 'auto'), an IVF index_key, or build_index for flat/hnsw"
            )

    @property
    def work_dir(self) -> Path:
        return Path(self.index.out_dir) / WORK_DIR


@dataclass(frozen=True)
class Part:
    """Consecutive embeddings files (sorted order) whose rows get the global row ids ``start .. start + rows``."""

    part_id: int
    paths: tuple[str, ...]
    counts: tuple[int, ...]
    start: int

    @property
    def rows(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class PartJob:
    """What every part needs besides its own files: the work dir, vector dim, read batch size, truth depth, and
    the modalities whose trained indexes it fills (no text index when the embeddings hold no text vectors)."""

    work_dir: str
    dim: int
    batch_size: int
    truth_k: int
    modalities: tuple[str, ...] = tuple(VECTOR_COLUMNS)


def trained_path(work_dir: str | Path, modality: str) -> Path:
    return Path(work_dir) / f"trained_{modality}.index"


def queries_path(work_dir: str | Path, modality: str) -> Path:
    return Path(work_dir) / f"queries_{modality}.npy"


def part_paths(work_dir: str | Path, part_id: int, modality: str) -> tuple[Path, Path]:
    """The part's filled index and its exact top-k of the tuning queries (scores + global row ids)."""
    stem = Path(work_dir) / f"part-{part_id:05d}-{modality}"
    return Path(f"{stem}.index"), Path(f"{stem}.truth.npz")


def part_done(job: PartJob, part: Part) -> bool:
    return all(p.is_file() for m in job.modalities for p in part_paths(job.work_dir, part.part_id, m))


def plan_parts(files: EmbeddingFiles, files_per_part: int) -> list[Part]:
    """Group the files (already in row-id order) into parts; start ids come from the footers' row counts."""
    starts = np.cumsum((0, *files.counts))
    return [
        Part(n, files.paths[i : i + files_per_part], files.counts[i : i + files_per_part], int(starts[i]))
        for n, i in enumerate(range(0, len(files.paths), files_per_part))
    ]


def check_mergeable(index: faiss.Index, key: str) -> None:
    """Accept [Refine(flat codes)] > [PreTransform] > IVF (not IVFPQR): the layouts whose parts merge exactly."""
    layer = index
    if isinstance(layer, faiss.IndexRefine):
        if not isinstance(faiss.downcast_index(layer.refine_index), faiss.IndexFlatCodes):
            raise ConfigError(f"index key {key!r}: only flat-code refinement (RFlat, Refine(SQ...)) can be merged")
        layer = faiss.downcast_index(layer.base_index)
    if isinstance(layer, faiss.IndexPreTransform):
        layer = faiss.downcast_index(layer.index)
    if not isinstance(layer, faiss.IndexIVF) or isinstance(layer, faiss.IndexIVFPQR):
        raise ConfigError(
            f"index key {key!r} is not mergeable on disk: a sharded build needs an IVF index "
            "(e.g. 'IVF1024,PQ32x8np' or 'OPQ32,IVF4096_HNSW32,PQ32x8np,RFlat'); use build_index for Flat/HNSW"
        )


def choose_ivf(config: IndexBuildConfig, files: EmbeddingFiles) -> IndexChoice:
    """``index_key`` if given, else the ivfpq family sized for the data (Flat/HNSW have no lists to merge)."""
    if config.index_key is not None:
        try:
            memory = estimate_memory(config.index_key, files.count, files.dim)
        except ValueError:
            memory = -1
        choice = IndexChoice(config.index_key, "custom", memory, "index_key given in the config")
    else:
        choice = choose_index(files.count, files.dim, config.memory_bytes, "ivfpq", config.max_train_vectors)
        reason = f"{choice.reason}; IVF-PQ forced: a sharded build merges inverted lists (Flat/HNSW have none)"
        choice = IndexChoice(choice.key, choice.family, choice.memory_bytes, reason)
        try:
            auto = choose_index(files.count, files.dim, config.memory_bytes, "auto", config.max_train_vectors)
        except ConfigError:
            auto = choice
        if auto.family != "ivfpq":
            log.info("sharded build uses %s: the auto choice %s has no inverted lists to merge", choice.key, auto.key)
    check_mergeable(new_index(choice.key, files.dim), choice.key)
    return choice


def add_with_ids(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """IVF stores the given ids natively; a refine wrapper keeps its flat codes in row order beside it."""
    if isinstance(index, faiss.IndexRefine):
        faiss.downcast_index(index.base_index).add_with_ids(vectors, ids)
        index.refine_index.add(vectors)
        index.ntotal = index.base_index.ntotal
    else:
        index.add_with_ids(vectors, ids)


def add_part(job: PartJob, part: Part) -> dict[str, int]:
    """Add one part's vectors (ids = global row ids) to a copy of each trained index, and find the exact top-k
    of the tuning queries among the rows that hold a vector; writes ``part-<id>-<modality>.index`` /
    ``.truth.npz`` atomically."""
    files = EmbeddingFiles(part.paths, part.counts, job.dim, {})
    added = {}
    for modality in job.modalities:
        column = VECTOR_COLUMNS[modality]
        index_file, truth_file = part_paths(job.work_dir, part.part_id, modality)
        if index_file.is_file() and truth_file.is_file():  # done by an earlier (crashed or retried) attempt
            continue
        index = read_index(trained_path(job.work_dir, modality), mmap=False)
        queries = np.load(queries_path(job.work_dir, modality))
        heap = faiss.ResultHeap(len(queries), job.truth_k, keep_max=True)
        for batch in iter_vectors(files, column, job.batch_size):
            first = part.start + batch.start
            add_with_ids(index, batch.vectors, np.arange(first, first + len(batch.vectors), dtype=np.int64))
            found = batch_neighbours(queries, batch, job.truth_k, first)
            if found is not None:
                heap.add_result(*found)
        heap.finalize()
        with atomic_path(truth_file) as tmp, open(tmp, "wb") as f:
            np.savez(f, scores=heap.D, ids=heap.I)
        write_index(index, index_file)
        added[modality] = int(index.ntotal)
    return added


def merge_parts(trained: Path, parts: Sequence[Path], ivfdata: Path) -> faiss.Index:
    """The trained index holding every part: IVF lists merged into ``ivfdata`` (merge_ondisk, ids kept as
    given), refine codes appended in part order (their position is the row id), ``ntotal`` set on every layer."""
    index = read_index(trained, mmap=False)
    merge_ondisk(index, [str(p) for p in parts], str(ivfdata))
    _claim_merged_space(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists))
    ntotal = index.ntotal
    layer = index
    if isinstance(layer, faiss.IndexRefine):
        refine = faiss.downcast_index(layer.refine_index)
        for path in parts:
            part = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)  # IVF lists stay mapped; only codes are read
            refine.merge_from(faiss.downcast_index(part.refine_index))
        if refine.ntotal != ntotal:
            raise RuntimeError(
                f"merged {refine.ntotal} refine vectors but {ntotal} IVF entries from {len(parts)} parts"
            )
        layer = faiss.downcast_index(layer.base_index)
    while isinstance(layer, faiss.IndexPreTransform):  # merge_ondisk sets ntotal on the top and the IVF only
        layer.ntotal = ntotal
        layer = faiss.downcast_index(layer.index)
    return index


def _claim_merged_space(lists: faiss.OnDiskInvertedLists) -> None:
    """faiss' merge_from_multiple leaves the whole file on the free-slot list although the merged lists fill it,
    so a later add (``append``) would overwrite them; allocating that one slot marks the space as used."""
    size = lists.totsize
    if size and (lists.allocate_slot(size) != 0 or lists.totsize != size):
        raise RuntimeError(f"{lists.filename}: unexpected free-slot layout after merge_ondisk")


def merge_truth(paths: Sequence[Path], n_queries: int, k: int) -> np.ndarray:
    """Exact top-k row ids of the tuning queries over all parts, from each part's own top-k."""
    heap = faiss.ResultHeap(n_queries, k, keep_max=True)
    for path in paths:
        with np.load(path) as part:
            heap.add_result(part["scores"], part["ids"])
    heap.finalize()
    return heap.I


def add_parts_locally(job: PartJob, parts: Sequence[Part]) -> None:
    """The plain-loop runner (tests, small data); Beam's AddParts runs the same ``add_part`` in parallel."""
    for part in parts:
        add_part(job, part)


def build_sharded(
    config: ShardedBuildConfig, run_parts: Callable[[PartJob, list[Part]], None] = add_parts_locally
) -> dict[str, Any]:
    """Train, write ids.parquet, have ``run_parts`` fill the parts still missing, merge, tune, save infos.json.

    A crashed build resumes: the trained indexes and finished parts in ``<out>/_parts`` are reused when the
    plan (files, key, seeds) is unchanged; ``overwrite`` starts over.
    """
    began = time.perf_counter()
    cfg = config.index
    device = resolve_device(cfg.device)
    files = open_embeddings(cfg.embeddings_dir)
    out = prepare_dir(cfg.out_dir, cfg.overwrite)
    write_ids(out / IDS_FILE, iter_ids(files, cfg.batch_size))
    has_text = read_text_mask(out / IDS_FILE)
    plan = _prepare(config, files, device, has_text)
    modalities = tuple(plan["modalities"])
    job = PartJob(str(config.work_dir), files.dim, cfg.batch_size, min(max(EVAL_KS), files.count), modalities)
    parts = plan_parts(files, config.files_per_part)
    todo = [p for p in parts if not part_done(job, p)]
    log.info("%d parts of <= %d files, %d to add", len(parts), config.files_per_part, len(todo))
    added = time.perf_counter()
    if todo:
        run_parts(job, todo)
    missing = [p.part_id for p in parts if not part_done(job, p)]
    if missing:
        raise RuntimeError(f"parts {missing} have no output in {job.work_dir} after the add step; re-run to resume")
    add_seconds = time.perf_counter() - added
    indexes = {m: _merge_one(config, job, parts, m, plan, add_seconds, has_text) for m in modalities}
    infos = {
        "format_version": FORMAT_VERSION,
        "metric": "inner_product",
        "count": files.count,
        "dim": files.dim,
        "index_key": plan["spec"]["index_key"],
        "family": plan["spec"]["family"],
        "choice_reason": plan["spec"]["choice_reason"],
        "estimated_memory_bytes": plan["spec"]["memory_bytes"],
        "max_index_memory_bytes": cfg.memory_bytes,
        "indexes": indexes,
        "ids_file": IDS_FILE,
        "provenance": files.provenance,
        "sources": {
            "embeddings_dir": str(cfg.embeddings_dir),
            "files": [{"path": p, "rows": n} for p, n in zip(files.paths, files.counts, strict=True)],
        },
        "device": device,
        "seed": cfg.seed,
        "build": "sharded",
        "parts": len(parts),
        "files_per_part": config.files_per_part,
        "build_seconds": round(time.perf_counter() - began, 3),
        "peak_memory_bytes": peak_memory_bytes(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        "appends": [],
        **text_infos(has_text, plan.get("text_index_skipped")),
    }
    write_infos(out, infos)
    shutil.rmtree(config.work_dir, ignore_errors=True)
    return infos


def _prepare(config: ShardedBuildConfig, files: EmbeddingFiles, device: str, has_text: np.ndarray) -> dict[str, Any]:
    """Choose the key, train each trained_<modality>.index and save its tuning queries, unless a work dir
    with the same plan already holds them; the plan file is written last, so it marks them complete. The text
    index is trained on rows with text vectors and left out (as ``build_index`` does) without enough of them."""
    cfg, work = config.index, config.work_dir
    choice = choose_ivf(cfg, files)
    spec = {  # everything the trained indexes, queries and parts depend on
        "index_key": choice.key,
        "family": choice.family,
        "memory_bytes": choice.memory_bytes,
        "choice_reason": choice.reason,
        "files": [[p, n] for p, n in zip(files.paths, files.counts, strict=True)],
        "files_per_part": config.files_per_part,
        "seed": cfg.seed,
        "max_train_vectors": cfg.max_train_vectors,
        "tune_queries": cfg.tune_queries,
    }
    plan_file = work / PLAN_FILE
    if not cfg.overwrite and plan_file.is_file():
        done = json.loads(plan_file.read_text(encoding="utf-8"))
        if done["spec"] == spec and "modalities" in done:
            log.info("resuming the sharded build in %s", work)
            return done
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log.info("sharded index of %d x %d-d vectors: %s (%s)", files.count, files.dim, choice.key, choice.reason)
    trained, skipped = for_each_index(has_text, lambda m: _train_one(cfg, files, work, m, choice.key, has_text, device))
    plan: dict[str, Any] = {
        "spec": spec,
        "modalities": list(trained),
        "train_vectors": {m: t["train_vectors"] for m, t in trained.items()},
        "train_seconds": {m: t["train_seconds"] for m, t in trained.items()},
        **({"text_index_skipped": skipped} if skipped else {}),
    }
    with atomic_path(plan_file) as tmp:
        Path(tmp).write_text(json.dumps(plan, indent=2), encoding="utf-8")
    return plan


def _train_one(
    cfg: IndexBuildConfig,
    files: EmbeddingFiles,
    work: Path,
    modality: str,
    key: str,
    has_text: np.ndarray,
    device: str,
) -> dict[str, Any]:
    """Train ``work``/trained_<modality>.index on its seeded sample and save its tuning queries beside it."""
    column = VECTOR_COLUMNS[modality]
    train_rows, query_rows = sample_plan(cfg, files.count, has_text, modality)
    began = time.perf_counter()
    index = new_index(key, files.dim)
    train(index, gather_rows(files, column, train_rows, cfg.batch_size), device)
    write_index(index, trained_path(work, modality))
    seconds = round(time.perf_counter() - began, 3)
    with atomic_path(queries_path(work, modality)) as tmp, open(tmp, "wb") as f:
        np.save(f, gather_rows(files, column, query_rows, cfg.batch_size))
    return {"train_vectors": len(train_rows), "train_seconds": seconds}


def _merge_one(
    config: ShardedBuildConfig,
    job: PartJob,
    parts: Sequence[Part],
    modality: str,
    plan: dict,
    add_seconds: float,
    has_text: np.ndarray,
) -> dict[str, Any]:
    """Merge one modality's parts into <out>/<modality>.index + .ivfdata, then tune and evaluate it over the
    rows its searches may return."""
    out, cfg = Path(config.index.out_dir), config.index
    path = out / INDEX_FILES[modality]
    ivfdata = path.with_suffix(".ivfdata")
    began = time.perf_counter()
    with atomic_path(ivfdata) as tmp:
        index = merge_parts(
            trained_path(job.work_dir, modality),
            [part_paths(job.work_dir, p.part_id, modality)[0] for p in parts],
            Path(tmp),
        )
    # The index records this name; loaders take its basename beside the .index file (IO_FLAG_ONDISK_SAME_DIR).
    faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename = str(ivfdata)
    merged = time.perf_counter()
    queries = np.load(queries_path(job.work_dir, modality))
    allowed = modality_filter(modality, has_text)
    searchable = int(index.ntotal) if allowed is None else allowed.count
    truth = merge_truth([part_paths(job.work_dir, p.part_id, modality)[1] for p in parts], len(queries), job.truth_k)
    truth = truth[:, : min(job.truth_k, searchable)]  # fewer rows with text than the depth: no -1 columns
    tuned = tune(index, queries, truth, cfg.recall_target, allowed)
    metrics = evaluate_index(index, queries, truth, EVAL_KS, allowed)
    write_index(index, path)
    log.info("%s: %s, %d parts, params %r, %s", path.name, plan["spec"]["index_key"], len(parts), tuned.params, metrics)
    return {
        "file": path.name,
        "ivfdata_file": ivfdata.name,
        "column": VECTOR_COLUMNS[modality],
        "searchable_rows": searchable,
        "search_params": tuned.params,
        "recall_target": cfg.recall_target,
        "recall_target_met": tuned.target_met,
        "tuning_recall_at_10": round(tuned.recall, 4),
        "tuning_trials": tuned.trials,
        "recall": metrics,
        "recall_measured_at_count": int(index.ntotal),
        "train_vectors": plan["train_vectors"][modality],
        "train_seconds": plan["train_seconds"][modality],
        "add_seconds": round(add_seconds, 3),
        "merge_seconds": round(merged - began, 3),
        "file_bytes": os.path.getsize(path),
        "ivfdata_bytes": os.path.getsize(ivfdata),
    }
