"""Build the image and text indexes of one embed output dir, or append new embeddings files to them."""

from __future__ import annotations

import logging
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.index.build import add_batches, new_index, resolve_device, train
from mmembed.index.choose import IndexChoice, choose_index, estimate_memory
from mmembed.index.config import IndexBuildConfig
from mmembed.index.evaluate import evaluate_index, exact_search, sample_rows
from mmembed.index.keywords import append_keywords, build_keywords
from mmembed.index.reader import (
    VECTOR_COLUMNS,
    EmbeddingFiles,
    VectorBatch,
    gather_rows,
    iter_ids,
    iter_vectors,
    open_embeddings,
    open_files,
    vector_rows,
)
from mmembed.index.selection import NO_TEXT, modality_filter
from mmembed.index.store import (
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILES,
    base_name,
    generation_name,
    ids_name,
    ondisk_data_name,
    ondisk_lists,
    prepare_dir,
    read_index,
    read_infos,
    read_text_mask,
    remove_leftovers,
    remove_unreferenced,
    write_ids,
    write_index,
    write_infos,
)
from mmembed.index.tune import tune
from mmembed.progress import Progress, phase
from mmembed.schema import IDENTITY_KEYS

log = logging.getLogger(__name__)
EVAL_KS = (1, 10, 100)
T = TypeVar("T")


def build_index(config: IndexBuildConfig) -> dict[str, Any]:
    """Choose, train, fill, tune and save both indexes plus ids.parquet; returns (and writes) infos.json.

    The text index covers the rows with a text vector (``text_rows``; see ``mmembed.index.selection``): it is
    trained and tuned on them only, and left out (``text_index_skipped`` says why) when there are none or too
    few to train the chosen index.
    """
    began = time.perf_counter()
    device = resolve_device(config.device)
    files = open_embeddings(config.embeddings_dir)
    out = prepare_dir(config.out_dir, config.overwrite)
    choice = _choice(config, files)
    log.info("indexing %d vectors of dim %d as %s (%s)", files.count, files.dim, choice.key, choice.reason)
    write_ids(storage.join(out, IDS_FILE), iter_ids(files, config.batch_size))
    keywords = build_keywords(out, files, config.batch_size)
    has_text = read_text_mask(storage.join(out, IDS_FILE))
    indexes, skipped = for_each_index(
        has_text, lambda modality: _build_one(config, files, modality, choice.key, has_text, device, out)
    )
    infos = {
        "format_version": FORMAT_VERSION,
        "metric": "inner_product",
        "count": files.count,
        "dim": files.dim,
        "index_key": choice.key,
        "family": choice.family,
        "choice_reason": choice.reason,
        "estimated_memory_bytes": choice.memory_bytes,
        "max_index_memory_bytes": config.memory_bytes,
        "indexes": indexes,
        "ids_file": IDS_FILE,
        **keywords,
        "provenance": files.provenance,
        "sources": {"embeddings_dir": str(config.embeddings_dir), "files": _sources(files)},
        "device": device,
        "seed": config.seed,
        "build_seconds": round(time.perf_counter() - began, 3),
        "peak_memory_bytes": peak_memory_bytes(),
        "created_at": _now(),
        "appends": [],
        **text_infos(has_text, skipped),
    }
    write_infos(out, infos)
    remove_unreferenced(out, infos)  # an earlier index's appended generations, now replaced
    return infos


def append(index_dir: str | Path, new_files: Sequence[str], batch_size: int = 65_536) -> dict[str, Any]:
    """Add new embeddings files to a built index without retraining; row ids continue after the old ones.

    New image-only rows get the zero placeholder in the text index (never returned); an index built without a
    text index refuses files that hold text vectors, which only a rebuild can index.

    Crash safety: the grown indexes and ids are written as the next generation under new names (an on-disk
    ``.ivfdata`` is copied, then grown: never changed in place), ``infos.json`` is switched to them in one
    atomic write, and only then is the old generation removed. Killed at any point, the dir holds the old
    index or the new one, whole; leftovers of an unfinished generation are removed by the next append.
    """
    folder = str(index_dir)
    infos = read_infos(folder)
    remove_unreferenced(folder, infos)  # a crashed append's unfinished generation ...
    remove_leftovers(folder)  # ... and its half-written files and staging copies
    files = open_files(list(new_files))
    _check_same_model(infos, files, folder)
    new_text = len(vector_rows(files, VECTOR_COLUMNS["text"], batch_size))
    if new_text and "text" not in infos["indexes"]:
        raise ConfigError(
            f"cannot append {', '.join(files.paths)} to {folder}: they hold {new_text:,} text vectors but the index "
            f"has no text index ({infos.get('text_index_skipped', NO_TEXT)}); fix: rebuild it over all embeddings "
            f"(mmembed index --embeddings DIR --out {folder} --overwrite)"
        )
    start, generation = infos["count"], infos.get("generation", 0) + 1
    for modality, entry in infos["indexes"].items():
        entry.update(_append_one(folder, entry, modality, generation, start, files, batch_size))
    infos.update(append_keywords(folder, infos, generation, files, batch_size))
    old_ids = storage.join(folder, ids_name(infos))
    infos["ids_file"] = generation_name(IDS_FILE, generation)
    write_ids(storage.join(folder, infos["ids_file"]), iter_ids(files, batch_size), start=start, keep_from=old_ids)
    infos["generation"] = generation
    infos["count"] = start + files.count
    infos["text_rows"] = infos.get("text_rows", start) + new_text
    infos["sources"]["files"] += _sources(files)
    infos["appends"].append(
        {"rows": files.count, "text_rows": new_text, "first_row_id": start, "files": list(files.paths), "at": _now()}
    )
    write_infos(folder, infos)  # the switch: from here on the new generation is the index
    remove_unreferenced(folder, infos)
    log.info("appended %d vectors (row ids %d..%d) to %s", files.count, start, infos["count"] - 1, folder)
    return infos


def _append_one(
    folder: str, entry: dict[str, Any], modality: str, generation: int, start: int, files: EmbeddingFiles, batch: int
) -> dict[str, Any]:
    """Grow a local copy of one modality's index by ``files`` and publish it under ``generation``'s names
    (``.ivfdata`` first, then the ``.index`` that points to it); returns the infos entry fields that change."""
    url = storage.join(folder, entry["file"])
    name = generation_name(INDEX_FILES[modality], generation)
    with storage.staging_dir(folder) as stage:
        index, data = _open_for_append(folder, entry, stage)
        if index.ntotal != start:
            raise ConfigError(f"{url}: {index.ntotal} vectors, infos.json says {start}")
        with Progress(f"index {modality}: append", files.count, "vectors") as progress:
            batches = progress.track(iter_vectors(files, VECTOR_COLUMNS[modality], batch), _rows)
            add_batches(index, (b.vectors for b in batches))
        changed: dict[str, Any] = {"file": name}
        if data is not None:
            changed["ivfdata_file"] = generation_name(f"{modality}.ivfdata", generation)
            ondisk_lists(index).filename = changed["ivfdata_file"]  # loaders take this name from beside the index
        local = storage.join(stage, name)
        faiss.write_index(index, local)
        del index  # unmaps the grown .ivfdata before it is published
        if data is not None:
            storage.publish(data, storage.join(folder, changed["ivfdata_file"]))
        storage.publish(local, storage.join(folder, name))
    return changed


def _open_for_append(folder: str, entry: dict[str, Any], stage: str) -> tuple[faiss.Index, str | None]:
    """The index ``entry`` names loaded for adding, and the local path of its on-disk lists (None when it has
    no ``ivfdata_file``): a merged IVF index's ``.index`` and ``.ivfdata`` are copied into ``stage`` and its
    lists mapped read-write from there, so the published ``.ivfdata`` is never written to."""
    url = storage.join(folder, entry["file"])
    if not entry.get("ivfdata_file"):
        with storage.local_copy(url) as local:
            return read_index(local, mmap=False), None
    local = storage.join(stage, f"current-{entry['file']}")
    storage.download(url, local)
    data = storage.join(stage, ondisk_data_name(local) or entry["ivfdata_file"])  # the name it maps lists by
    storage.download(storage.join(folder, entry["ivfdata_file"]), data)
    return read_index(local, mmap=False), data


def for_each_index(has_text: np.ndarray, build: Callable[[str], T]) -> tuple[dict[str, T], str | None]:
    """``build(modality)`` for the image index, then the text index unless no row has a text vector; a
    ConfigError from the text one (faiss could not train the image index's key on the fewer text vectors)
    leaves it out too. Returns what was built and why there is no text index (None when there is one)."""
    if not has_text.any():
        log.warning("no text index: %s", NO_TEXT)
        return {"image": build("image")}, NO_TEXT
    built = {"image": build("image")}
    try:
        built["text"] = build("text")
    except ConfigError as exc:
        if has_text.all():  # the same rows trained the image index: not a matter of too few text vectors
            raise
        reason = (
            f"only {int(has_text.sum()):,} of {len(has_text):,} rows have text vectors, too few to train the "
            f"index key the image index uses: {exc}; to search them, build with --family flat or hnsw (no training)"
        )
        log.warning("no text index: %s", reason)
        return built, reason
    return built, None


def text_infos(has_text: np.ndarray, skipped: str | None) -> dict[str, Any]:
    """infos.json's record of the text rows: how many rows hold a text vector, and why there is no text index."""
    return {"text_rows": int(has_text.sum()), **({"text_index_skipped": skipped} if skipped else {})}


def sample_plan(
    config: IndexBuildConfig, count: int, has_text: np.ndarray, modality: str
) -> tuple[np.ndarray, np.ndarray]:
    """The seeded training rows and held-out tuning-query rows of one modality's index, drawn from the rows
    that hold its vectors (all rows for images, as before image-only samples existed)."""
    within = None if modality == "image" or has_text.all() else np.flatnonzero(has_text)
    n = count if within is None else len(within)
    train_rows = sample_rows(count, min(n, config.max_train_vectors), config.seed, within=within)
    query_rows = sample_rows(count, min(n, config.tune_queries), config.seed + 1, exclude=train_rows, within=within)
    return train_rows, query_rows


def peak_memory_bytes() -> int:
    """Peak resident memory of this process so far (getrusage maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _choice(config: IndexBuildConfig, files: EmbeddingFiles) -> IndexChoice:
    if config.index_key is None:
        return choose_index(files.count, files.dim, config.memory_bytes, config.family, config.max_train_vectors)
    try:
        memory = estimate_memory(config.index_key, files.count, files.dim)
    except ValueError:
        memory = -1
    return IndexChoice(config.index_key, "custom", memory, "index_key given in the config")


def _build_one(
    config: IndexBuildConfig,
    files: EmbeddingFiles,
    modality: str,
    key: str,
    has_text: np.ndarray,
    device: str,
    out: str,
) -> dict[str, Any]:
    """Train, add (computing exact neighbours of the held-out queries in the same pass), tune, evaluate, save;
    every row is added (row ids stay positional), searches and truth cover the rows that hold a vector."""
    column = VECTOR_COLUMNS[modality]
    train_rows, query_rows = sample_plan(config, files.count, has_text, modality)
    allowed = modality_filter(modality, has_text)
    searchable = files.count if allowed is None else allowed.count
    index = new_index(key, files.dim)
    began = time.perf_counter()
    needs_training = not index.is_trained
    if needs_training:
        with phase(f"index {modality}: train", len(train_rows), "vectors"):
            train(index, gather_rows(files, column, train_rows, config.batch_size), device)
    trained = time.perf_counter()
    queries = gather_rows(files, column, query_rows, config.batch_size)
    with Progress(f"index {modality}: add", files.count, "vectors") as progress:
        batches = progress.track(_adding(index, iter_vectors(files, column, config.batch_size)), _rows)
        truth = exact_search(queries, batches, min(max(EVAL_KS), searchable), device)
    added = time.perf_counter()
    with phase(f"index {modality}: tune", len(queries), "queries"):
        tuned = tune(index, queries, truth, config.recall_target, allowed)
        metrics = evaluate_index(index, queries, truth, EVAL_KS, allowed)
    name = INDEX_FILES[modality]
    size = write_index(index, storage.join(out, name))
    log.info("%s: %s, params %r, %s", name, key, tuned.params, metrics)
    return {
        "file": name,
        "column": column,
        "searchable_rows": searchable,
        "search_params": tuned.params,
        "recall_target": config.recall_target,
        "recall_target_met": tuned.target_met,
        "tuning_recall_at_10": round(tuned.recall, 4),
        "tuning_trials": tuned.trials,
        "recall": metrics,
        "recall_measured_at_count": files.count,
        "train_vectors": len(train_rows) if needs_training else 0,
        "train_seconds": round(trained - began, 3),
        "add_seconds": round(added - trained, 3),
        "file_bytes": size,
    }


def _adding(index: faiss.Index, batches: Iterable[VectorBatch]) -> Iterator[VectorBatch]:
    """Add each batch to ``index`` and pass it on, so exact search reads the same data in the same pass."""
    for batch in batches:
        add_batches(index, [batch.vectors])
        yield batch


def _rows(batch: VectorBatch) -> int:
    return len(batch.vectors)


def _check_same_model(infos: dict[str, Any], files: EmbeddingFiles, folder: str) -> None:
    built = infos["provenance"]
    diff = [k for k in IDENTITY_KEYS if built.get(k) != files.provenance.get(k)]
    if diff:  # the first difference only: a model's preprocessing alone is hundreds of characters
        name = diff[0]
        raise ConfigError(
            f"cannot append {', '.join(files.paths)} to {folder}: provenance differs in {name} (index "
            f"{built.get(name)!r:.60}, files {files.provenance.get(name)!r:.60}); fix: embed them with the index's "
            "model, or build a new index with --out NEW_DIR"
        )
    indexed = {base_name(s["path"]) for s in infos["sources"]["files"]}
    again = [p for p in files.paths if base_name(p) in indexed]
    if again:
        raise ConfigError(f"already in {folder}: {', '.join(again)}; appending them again would duplicate rows")


def _sources(files: EmbeddingFiles) -> list[dict[str, Any]]:
    return [{"path": p, "rows": n} for p, n in zip(files.paths, files.counts, strict=True)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
