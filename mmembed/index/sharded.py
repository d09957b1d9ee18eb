"""Sharded IVF build for data beyond one machine: train once, fill copies of the trained index part by part
(in parallel), then merge the parts' inverted lists into one on-disk ``.ivfdata`` file (faiss ``merge_ondisk``).

``build_sharded(config, run_parts)`` does it all; ``run_parts(job, parts)`` must call ``add_part(job, part)``
for every part (Beam runs them in parallel in ``pipelines/build_index.py``; the default is a plain loop).
Training and the tuning queries use the same seeded samples as ``build_index``, so on the same data both
builds train identical indexes and hold the same vectors under the same row ids; image-only rows are handled
the same way too (zero placeholders in the text index, never returned: ``mmembed.index.selection``).

Everything goes through ``mmembed.storage``, so ``out_dir`` may be an object-store URL that the launcher and
the workers share: the launcher writes the trained indexes and tuning queries to ``<out>/_parts``, workers
fetch them once (``part_inputs``, in their ``setup``) and write their parts there, the launcher merges
local copies of the parts and publishes the result. The work items carry paths only, never arrays.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from faiss.contrib.ondisk import merge_ondisk

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.index.build import new_index, resolve_device, train
from mmembed.index.choose import IndexChoice, choose_index, estimate_memory
from mmembed.index.config import IndexBuildConfig, ShardedBuildConfig
from mmembed.index.evaluate import batch_neighbours, evaluate_index
from mmembed.index.job import EVAL_KS, for_each_index, peak_memory_bytes, sample_plan, text_infos
from mmembed.index.keywords import build_keywords
from mmembed.index.reader import VECTOR_COLUMNS, EmbeddingFiles, gather_rows, iter_ids, iter_vectors, open_embeddings
from mmembed.index.selection import modality_filter
from mmembed.index.store import (
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILES,
    base_name,
    ondisk_lists,
    prepare_dir,
    read_index,
    read_text_mask,
    remove_folder,
    remove_unreferenced,
    write_ids,
    write_index,
    write_infos,
)
from mmembed.index.tune import tune
from mmembed.progress import Progress, phase

log = logging.getLogger(__name__)
PLAN_FILE = "plan.json"


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


@dataclass(frozen=True)
class PartInputs:
    """What a worker fetches once (``part_inputs``) for all its parts: a local copy of each modality's trained
    empty index (each part reads a fresh copy of it) and the tuning queries it finds exact neighbours of."""

    trained: dict[str, str]
    queries: dict[str, np.ndarray]


def trained_path(work_dir: str, modality: str) -> str:
    return storage.join(work_dir, f"trained_{modality}.index")


def queries_path(work_dir: str, modality: str) -> str:
    return storage.join(work_dir, f"queries_{modality}.npy")


def part_paths(work_dir: str, part_id: int, modality: str) -> tuple[str, str]:
    """The part's filled index and its exact top-k of the tuning queries (scores + global row ids)."""
    stem = f"part-{part_id:05d}-{modality}"
    return storage.join(work_dir, f"{stem}.index"), storage.join(work_dir, f"{stem}.truth.npz")


def parts_to_do(job: PartJob, parts: Sequence[Part]) -> list[Part]:
    """The parts whose outputs are not all in the work dir yet (one listing, not a request per file)."""
    listed = {base_name(url) for url in storage.glob(storage.join(job.work_dir, "part-*"))}
    return [
        part
        for part in parts
        if not all(base_name(p) in listed for m in job.modalities for p in part_paths(job.work_dir, part.part_id, m))
    ]


def save_array(url: str, array: np.ndarray) -> None:
    """One array as ``.npy`` at ``url``, atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    storage.write_bytes(url, buffer.getvalue())


def load_array(url: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.read_bytes(url)))


@contextlib.contextmanager
def part_inputs(job: PartJob) -> Iterator[PartInputs]:
    """The trained indexes (local copies, removed afterwards) and tuning queries of ``job``, from its work dir:
    a worker fetches them once, in its DoFn's ``setup``, so the job graph holds only the work dir's path."""
    with contextlib.ExitStack() as copies:
        trained = {m: copies.enter_context(storage.local_copy(trained_path(job.work_dir, m))) for m in job.modalities}
        yield PartInputs(trained, {m: load_array(queries_path(job.work_dir, m)) for m in job.modalities})


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


def add_part(job: PartJob, part: Part, inputs: PartInputs | None = None) -> dict[str, int]:
    """Add one part's vectors (ids = global row ids) to a copy of each trained index, and find the exact top-k
    of the tuning queries among the rows that hold a vector; writes ``part-<id>-<modality>.index`` /
    ``.truth.npz`` atomically. ``inputs``: ``part_inputs(job)``, fetched for this part alone when not given."""
    if inputs is None:
        with part_inputs(job) as fetched:
            return add_part(job, part, fetched)
    files = EmbeddingFiles(part.paths, part.counts, job.dim, {})
    added = {}
    for modality in job.modalities:
        column = VECTOR_COLUMNS[modality]
        index_file, truth_file = part_paths(job.work_dir, part.part_id, modality)
        if storage.exists(index_file) and storage.exists(truth_file):  # done by an earlier (crashed) attempt
            continue
        index = read_index(inputs.trained[modality], mmap=False)
        queries = inputs.queries[modality]
        heap = faiss.ResultHeap(len(queries), job.truth_k, keep_max=True)
        for batch in iter_vectors(files, column, job.batch_size):
            first = part.start + batch.start
            add_with_ids(index, batch.vectors, np.arange(first, first + len(batch.vectors), dtype=np.int64))
            found = batch_neighbours(queries, batch, job.truth_k, first)
            if found is not None:
                heap.add_result(*found)
        heap.finalize()
        buffer = io.BytesIO()
        np.savez(buffer, scores=heap.D, ids=heap.I)
        storage.write_bytes(truth_file, buffer.getvalue())
        write_index(index, index_file)
        added[modality] = int(index.ntotal)
    return added


def merge_parts(trained: str, parts: Sequence[str], ivfdata: str) -> faiss.Index:
    """The trained index holding every part (all LOCAL files): IVF lists merged into ``ivfdata`` (merge_ondisk,
    ids kept as given), refine codes appended in part order (their position is the row id), ``ntotal`` set on
    every layer."""
    index = read_index(trained, mmap=False)
    merge_ondisk(index, [str(p) for p in parts], str(ivfdata))
    _claim_merged_space(ondisk_lists(index))
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


def merge_truth(urls: Sequence[str], n_queries: int, k: int) -> np.ndarray:
    """Exact top-k row ids of the tuning queries over all parts, from each part's own top-k."""
    heap = faiss.ResultHeap(n_queries, k, keep_max=True)
    for url in urls:
        with np.load(io.BytesIO(storage.read_bytes(url))) as part:
            heap.add_result(part["scores"], part["ids"])
    heap.finalize()
    return heap.I


def finished_parts(job: PartJob, todo: Sequence[Part]) -> Callable[[Progress], None]:
    """A ``Progress.watch`` poll: the parts whose outputs appeared in the work dir (one listing a poll), whoever
    adds them (the plain loop here, Beam workers in other processes or machines)."""
    pending = {p.part_id: p for p in todo}

    def poll(progress: Progress) -> None:
        left = {p.part_id for p in parts_to_do(job, list(pending.values()))}
        for part_id in sorted(pending.keys() - left):
            part = pending.pop(part_id)
            progress.advance(1, size=part.rows, vectors=part.rows)

    return poll


def add_parts_locally(job: PartJob, parts: Sequence[Part]) -> None:
    """The plain-loop runner (tests, small data); Beam's AddParts runs the same ``add_part`` in parallel."""
    with part_inputs(job) as inputs:
        for part in parts:
            add_part(job, part, inputs)


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
    write_ids(storage.join(out, IDS_FILE), iter_ids(files, cfg.batch_size))
    keywords = build_keywords(out, files, cfg.batch_size)
    has_text = read_text_mask(storage.join(out, IDS_FILE))
    plan = _prepare(config, files, device, has_text)
    modalities = tuple(plan["modalities"])
    job = PartJob(config.work_dir, files.dim, cfg.batch_size, min(max(EVAL_KS), files.count), modalities)
    parts = plan_parts(files, config.files_per_part)
    todo = parts_to_do(job, parts)
    log.info("%d parts of <= %d files, %d to add", len(parts), config.files_per_part, len(todo))
    added = time.perf_counter()
    if todo:
        vectors = sum(p.rows for p in todo)
        with Progress("index: add", len(todo), "parts", rate_of="vectors", size_total=vectors) as progress:
            if progress.enabled:
                progress.watch(finished_parts(job, todo))
            run_parts(job, todo)
    missing = [p.part_id for p in parts_to_do(job, parts)]
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
        **keywords,
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
    remove_unreferenced(out, infos)  # an earlier index's appended generations, now replaced
    remove_folder(config.work_dir)
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
    plan_file = storage.join(work, PLAN_FILE)
    if not cfg.overwrite and storage.exists(plan_file):
        done = json.loads(storage.read_bytes(plan_file))
        if done["spec"] == spec and "modalities" in done:
            log.info("resuming the sharded build in %s", work)
            return done
    remove_folder(work)
    storage.make_dirs(work)
    log.info("sharded index of %d x %d-d vectors: %s (%s)", files.count, files.dim, choice.key, choice.reason)
    trained, skipped = for_each_index(has_text, lambda m: _train_one(cfg, files, work, m, choice.key, has_text, device))
    plan: dict[str, Any] = {
        "spec": spec,
        "modalities": list(trained),
        "train_vectors": {m: t["train_vectors"] for m, t in trained.items()},
        "train_seconds": {m: t["train_seconds"] for m, t in trained.items()},
        **({"text_index_skipped": skipped} if skipped else {}),
    }
    storage.write_bytes(plan_file, json.dumps(plan, indent=2).encode())
    return plan


def _train_one(
    cfg: IndexBuildConfig,
    files: EmbeddingFiles,
    work: str,
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
    with phase(f"index {modality}: train", len(train_rows), "vectors"):
        train(index, gather_rows(files, column, train_rows, cfg.batch_size), device)
    write_index(index, trained_path(work, modality))
    seconds = round(time.perf_counter() - began, 3)
    save_array(queries_path(work, modality), gather_rows(files, column, query_rows, cfg.batch_size))
    return {"train_vectors": len(train_rows), "train_seconds": seconds}


def _merge_copies(job: PartJob, parts: Sequence[Part], modality: str, ivfdata: str) -> faiss.Index:
    """``merge_parts`` over local copies of the trained index and the parts (the work dir may be remote; the
    copies go once merged); the index records the ``.ivfdata`` by its name alone, which loaders look for beside
    the ``.index`` file (IO_FLAG_ONDISK_SAME_DIR)."""
    with contextlib.ExitStack() as copies:
        trained = copies.enter_context(storage.local_copy(trained_path(job.work_dir, modality)))
        local = [
            copies.enter_context(storage.local_copy(part_paths(job.work_dir, p.part_id, modality)[0])) for p in parts
        ]
        index = merge_parts(trained, local, ivfdata)
    ondisk_lists(index).filename = os.path.basename(ivfdata)
    return index


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
    rows its searches may return. The merge runs on local copies in a staging folder (faiss maps local files);
    the ``.ivfdata`` is published first, then the ``.index`` that points to it."""
    out, cfg = str(config.index.out_dir), config.index
    name, data_name = INDEX_FILES[modality], f"{modality}.ivfdata"
    began = time.perf_counter()
    with storage.staging_dir(out) as stage:
        ivfdata = storage.join(stage, data_name)
        with phase(f"index {modality}: merge", len(parts), "parts"):
            index = _merge_copies(job, parts, modality, ivfdata)
        merged = time.perf_counter()
        queries = load_array(queries_path(job.work_dir, modality))
        allowed = modality_filter(modality, has_text)
        searchable = int(index.ntotal) if allowed is None else allowed.count
        truth_urls = [part_paths(job.work_dir, p.part_id, modality)[1] for p in parts]
        truth = merge_truth(truth_urls, len(queries), job.truth_k)
        truth = truth[:, : min(job.truth_k, searchable)]  # fewer rows with text than the depth: no -1 columns
        with phase(f"index {modality}: tune", len(queries), "queries"):
            tuned = tune(index, queries, truth, cfg.recall_target, allowed)
            metrics = evaluate_index(index, queries, truth, EVAL_KS, allowed)
        local_index = storage.join(stage, name)
        faiss.write_index(index, local_index)
        ntotal = int(index.ntotal)
        del index  # unmaps the .ivfdata before it is published
        sizes = {"file_bytes": os.path.getsize(local_index), "ivfdata_bytes": os.path.getsize(ivfdata)}
        storage.publish(ivfdata, storage.join(out, data_name))
        storage.publish(local_index, storage.join(out, name))
    log.info("%s: %s, %d parts, params %r, %s", name, plan["spec"]["index_key"], len(parts), tuned.params, metrics)
    return {
        "file": name,
        "ivfdata_file": data_name,
        "column": VECTOR_COLUMNS[modality],
        "searchable_rows": searchable,
        "search_params": tuned.params,
        "recall_target": cfg.recall_target,
        "recall_target_met": tuned.target_met,
        "tuning_recall_at_10": round(tuned.recall, 4),
        "tuning_trials": tuned.trials,
        "recall": metrics,
        "recall_measured_at_count": ntotal,
        "train_vectors": plan["train_vectors"][modality],
        "train_seconds": plan["train_seconds"][modality],
        "add_seconds": round(add_seconds, 3),
        "merge_seconds": round(merged - began, 3),
        **sizes,
    }
