"""Build the image and text indexes of one embed output dir, or append new embeddings files to them."""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mmembed.config import ConfigError
from mmembed.index.build import add_batches, new_index, resolve_device, train
from mmembed.index.choose import IndexChoice, choose_index, estimate_memory
from mmembed.index.config import IndexBuildConfig
from mmembed.index.evaluate import evaluate_index, exact_search, sample_rows
from mmembed.index.reader import (
    VECTOR_COLUMNS,
    EmbeddingFiles,
    gather_rows,
    iter_ids,
    iter_vectors,
    open_embeddings,
    open_files,
)
from mmembed.index.store import (
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILES,
    prepare_dir,
    read_index,
    read_infos,
    write_ids,
    write_index,
    write_infos,
)
from mmembed.index.tune import tune
from mmembed.schema import IDENTITY_KEYS

log = logging.getLogger(__name__)
EVAL_KS = (1, 10, 100)


def build_index(config: IndexBuildConfig) -> dict[str, Any]:
    """Choose, train, fill, tune and save both indexes plus ids.parquet; returns (and writes) infos.json."""
    began = time.perf_counter()
    device = resolve_device(config.device)
    files = open_embeddings(config.embeddings_dir)
    out = prepare_dir(config.out_dir, config.overwrite)
    choice = _choice(config, files)
    log.info("indexing %d vectors of dim %d as %s (%s)", files.count, files.dim, choice.key, choice.reason)
    train_rows = sample_rows(files.count, min(files.count, config.max_train_vectors), config.seed)
    query_rows = sample_rows(files.count, min(files.count, config.tune_queries), config.seed + 1, exclude=train_rows)
    write_ids(out / IDS_FILE, iter_ids(files, config.batch_size))
    indexes = {
        modality: _build_one(config, files, modality, choice.key, train_rows, query_rows, device, out)
        for modality in VECTOR_COLUMNS
    }
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
        "provenance": files.provenance,
        "sources": {"embeddings_dir": str(config.embeddings_dir), "files": _sources(files)},
        "device": device,
        "seed": config.seed,
        "build_seconds": round(time.perf_counter() - began, 3),
        "peak_memory_bytes": peak_memory_bytes(),
        "created_at": _now(),
        "appends": [],
    }
    write_infos(out, infos)
    return infos


def append(index_dir: str | Path, new_files: Sequence[str], batch_size: int = 65_536) -> dict[str, Any]:
    """Add new embeddings files to a built index without retraining; row ids continue after the old ones."""
    folder = Path(index_dir)
    infos = read_infos(folder)
    files = open_files(list(new_files))
    _check_same_model(infos, files, folder)
    start = infos["count"]
    temps = {}
    for modality, column in VECTOR_COLUMNS.items():
        index = read_index(folder / INDEX_FILES[modality], mmap=False)  # mapped lists are read-only
        if index.ntotal != start:
            raise ConfigError(f"{folder / INDEX_FILES[modality]}: {index.ntotal} vectors, infos.json says {start}")
        add_batches(index, (b.vectors for b in iter_vectors(files, column, batch_size)))
        temps[modality] = _write_temp(index, folder / INDEX_FILES[modality])
    write_ids(
        folder / f"{IDS_FILE}.new",
        iter_ids(files, batch_size),
        start=start,
        keep_from=folder / IDS_FILE,
    )
    for modality, tmp in temps.items():  # every new file is complete before any replaces an old one
        os.replace(tmp, folder / INDEX_FILES[modality])
    os.replace(folder / f"{IDS_FILE}.new", folder / IDS_FILE)
    infos["count"] = start + files.count
    infos["sources"]["files"] += _sources(files)
    infos["appends"].append({"rows": files.count, "first_row_id": start, "files": list(files.paths), "at": _now()})
    write_infos(folder, infos)
    log.info("appended %d vectors (row ids %d..%d) to %s", files.count, start, infos["count"] - 1, folder)
    return infos


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
    train_rows: np.ndarray,
    query_rows: np.ndarray,
    device: str,
    out: Path,
) -> dict[str, Any]:
    """Train, add (computing exact neighbours of the held-out queries in the same pass), tune, evaluate, save."""
    column = VECTOR_COLUMNS[modality]
    index = new_index(key, files.dim)
    began = time.perf_counter()
    needs_training = not index.is_trained
    if needs_training:
        train(index, gather_rows(files, column, train_rows, config.batch_size), device)
    trained = time.perf_counter()
    queries = gather_rows(files, column, query_rows, config.batch_size)
    batches = (b.vectors for b in iter_vectors(files, column, config.batch_size))
    truth = exact_search(queries, _adding(index, batches), min(max(EVAL_KS), files.count), device)
    added = time.perf_counter()
    tuned = tune(index, queries, truth, config.recall_target)
    metrics = evaluate_index(index, queries, truth, EVAL_KS)
    path = out / INDEX_FILES[modality]
    write_index(index, path)
    log.info("%s: %s, params %r, %s", path.name, key, tuned.params, metrics)
    return {
        "file": path.name,
        "column": column,
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
        "file_bytes": os.path.getsize(path),
    }


def _adding(index: faiss.Index, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Add each batch to ``index`` and pass it on, so exact search reads the same data in the same pass."""
    for block in batches:
        add_batches(index, [block])
        yield block


def _check_same_model(infos: dict[str, Any], files: EmbeddingFiles, folder: Path) -> None:
    built = infos["provenance"]
    diff = [k for k in IDENTITY_KEYS if built.get(k) != files.provenance.get(k)]
    if diff:
        raise ConfigError(
            f"cannot append {', '.join(files.paths)} to {folder}: provenance differs in {diff} "
            f"(index: {[built.get(k) for k in diff]}, files: {[files.provenance.get(k) for k in diff]})"
        )
    indexed = {Path(s["path"]).name for s in infos["sources"]["files"]}
    again = [p for p in files.paths if Path(p).name in indexed]
    if again:
        raise ConfigError(f"already in {folder}: {', '.join(again)}; appending them again would duplicate rows")


def _write_temp(index: faiss.Index, path: Path) -> str:
    tmp = f"{path}.new"
    faiss.write_index(index, tmp)
    return tmp


def _sources(files: EmbeddingFiles) -> list[dict[str, Any]]:
    return [{"path": p, "rows": n} for p, n in zip(files.paths, files.counts, strict=True)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
