"""Read an embed job's ``embeddings/*.parquet``: check one provenance, count rows, stream vectors in batches.

Image-only samples (embedded with ``--captions optional`` or ``none``) hold an all-zero ``text_embedding``
and a null ``similarity`` (``mmembed.schema.text_present`` tells them apart); their rows keep their place, so
row ids stay positional in every column, and readers report which rows hold a text vector (``present``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.outputs import EMBEDDINGS_DIR
from mmembed.schema import IDENTITY_KEYS, read_provenance, text_present, warn_if_random_weights

VECTOR_COLUMNS = {"image": "image_embedding", "text": "text_embedding"}
ID_COLUMNS = ("key", "shard", "offset", "caption", "url")
SAMPLE_COLUMNS = ("metadata", "width", "height", "similarity")  # also in the ids table, for ``--where``
# A vector column that some rows lack -> the column whose nulls mark those rows (read with ``text_present``).
PRESENCE_COLUMNS = {"text_embedding": "similarity"}


class EmbeddingsReadError(ValueError):
    """An embeddings file is corrupt or truncated; the message names the file and the fix."""


@dataclass(frozen=True)
class EmbeddingFiles:
    """A checked set of embeddings files: paths in row-id order, rows per file, dim and shared provenance."""

    paths: tuple[str, ...]
    counts: tuple[int, ...]
    dim: int
    provenance: dict[str, Any]

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class VectorBatch:
    """Rows ``start .. start + len(vectors)`` (global row ids) as float32 vectors, with id columns if asked.

    ``present`` marks the rows that hold a vector of the column (a row without one reads as zeros); None when
    every row of the batch does.
    """

    start: int
    vectors: np.ndarray
    ids: pa.Table | None = None
    present: np.ndarray | None = None


def list_embedding_files(embed_dir: str) -> list[str]:
    """The ``embeddings/*.parquet`` files of an embed output dir, sorted by name: absolute paths for a local
    dir, full URLs for an object store (an index records them, and every command must find them from any
    working directory or machine)."""
    files = storage.glob(storage.join(str(embed_dir), EMBEDDINGS_DIR, "*.parquet"))
    if not files:
        raise ConfigError(f"no {EMBEDDINGS_DIR}/*.parquet under {embed_dir!r}; run the embed job first")
    return files


def open_embeddings(embed_dir: str) -> EmbeddingFiles:
    """List and check an embed output dir's embeddings files (footers only, no data read)."""
    return open_files(list_embedding_files(embed_dir))


def open_files(paths: Sequence[str]) -> EmbeddingFiles:
    """Check files share one provenance and dim; row counts come from the Parquet footers."""
    if not paths:
        raise ConfigError("no embeddings files given")
    counts, groups, dims = [], {}, set()
    provenance: dict[str, Any] = {}
    for path in paths:
        schema, rows = _footer(path)
        prov = read_provenance(schema)
        if prov is None:
            raise ConfigError(
                f"{path}: no mmembed provenance in the Parquet metadata; was it written by the embed job?"
            )
        for column in VECTOR_COLUMNS.values():
            kind = schema.field(column).type if column in schema.names else None
            if not isinstance(kind, pa.FixedSizeListType):
                raise ConfigError(f"{path}: column {column!r} missing or not fixed_size_list; not an embeddings file")
            dims.add(kind.list_size)
        identity = tuple((k, json.dumps(prov.get(k), sort_keys=True)) for k in IDENTITY_KEYS)
        groups.setdefault(identity, []).append(path)
        provenance = provenance or prov
        counts.append(rows)
    if len(groups) > 1:
        raise ConfigError(_mixed_message(groups))
    if len(dims) > 1:
        raise ConfigError(f"embeddings files disagree on dim {sorted(dims)}: {', '.join(paths)}")
    warn_if_random_weights(provenance, f"the embeddings in {os.path.dirname(paths[0])}")
    return EmbeddingFiles(tuple(paths), tuple(counts), dims.pop(), provenance)


def iter_vectors(
    files: EmbeddingFiles, column: str, batch_size: int = 65_536, with_ids: bool = False
) -> Iterator[VectorBatch]:
    """Stream one vector column (float32, C-contiguous) in bounded batches, in global row-id order, with
    each batch's ``present`` rows for a column that some rows lack (``PRESENCE_COLUMNS``)."""
    start = 0
    flag = PRESENCE_COLUMNS.get(column)
    columns = [column, *([flag] if flag else []), *(ID_COLUMNS if with_ids else ())]
    for batch in _batches(files, columns, batch_size):
        vectors = _to_numpy(batch.column(column), files.dim)
        ids = pa.Table.from_batches([batch.select(list(ID_COLUMNS))]) if with_ids else None
        present = text_present(batch.column(flag)) if flag else None
        if present is not None and present.all():
            present = None
        yield VectorBatch(start, vectors, ids, present)
        start += len(vectors)


def iter_columns(files: EmbeddingFiles, columns: Sequence[str], batch_size: int = 65_536) -> Iterator[pa.Table]:
    """Stream ``columns`` of every row in global row-id order; a missing column or a corrupt file is an
    ``EmbeddingsReadError`` naming the file."""
    for batch in _batches(files, columns, batch_size):
        yield pa.Table.from_batches([batch])


@contextlib.contextmanager
def parquet_file(url: str) -> Iterator[pq.ParquetFile]:
    """A Parquet file opened through ``mmembed.storage``: footer and column chunks are read with seeks (range
    requests on an object store), never the whole file at once."""
    with storage.open_read(url) as source:
        yield pq.ParquetFile(source)


def _batches(files: EmbeddingFiles, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """``columns`` of every file in row-id order, in batches of at most ``batch_size`` rows; a missing
    column or an unreadable file is an ``EmbeddingsReadError`` naming the file."""
    for path, rows in zip(files.paths, files.counts, strict=True):
        if rows == 0:
            continue
        try:
            with parquet_file(path) as parquet:
                missing = [c for c in columns if c not in parquet.schema_arrow.names]
                if missing:
                    raise pa.ArrowInvalid(f"columns {missing} missing; written by an older embed job?")
                yield from parquet.iter_batches(batch_size=batch_size, columns=list(columns))
        except (OSError, pa.ArrowException) as exc:
            raise read_error(path, exc) from exc


def iter_ids(files: EmbeddingFiles, batch_size: int = 65_536) -> Iterator[pa.Table]:
    """Stream the id columns (key, shard, offset, caption, url), ``has_text`` (the row holds a text vector)
    and the columns ``--where`` filters on (metadata, width, height, similarity) in global row-id order."""
    flag = PRESENCE_COLUMNS[VECTOR_COLUMNS["text"]]
    for table in iter_columns(files, (*ID_COLUMNS, *SAMPLE_COLUMNS), batch_size):
        has_text = pa.array(text_present(table.column(flag)), type=pa.bool_())
        yield table.append_column("has_text", has_text)


def vector_rows(files: EmbeddingFiles, column: str, batch_size: int = 65_536) -> np.ndarray:
    """The sorted global row ids that hold a vector of ``column`` (every row for the image column); reads only
    the small presence column, so samples can be drawn from these rows before any vector is read."""
    flag = PRESENCE_COLUMNS.get(column)
    if flag is None:
        return np.arange(files.count, dtype=np.int64)
    present = [text_present(table.column(flag)) for table in iter_columns(files, (flag,), batch_size)]
    return np.flatnonzero(np.concatenate([np.zeros(0, dtype=bool), *present])).astype(np.int64)


def gather_rows(files: EmbeddingFiles, column: str, row_ids: np.ndarray, batch_size: int = 65_536) -> np.ndarray:
    """The vectors of sorted global ``row_ids`` (a seeded sample), streamed; files with no pick are skipped."""
    row_ids = np.asarray(row_ids, dtype=np.int64)
    if np.any(np.diff(row_ids) <= 0):
        raise ValueError("row_ids must be sorted and unique")
    out = np.empty((len(row_ids), files.dim), dtype=np.float32)
    bounds = np.cumsum((0, *files.counts))
    for i, path in enumerate(files.paths):
        lo, hi = np.searchsorted(row_ids, [bounds[i], bounds[i + 1]])
        if lo == hi:
            continue
        single = EmbeddingFiles((path,), (files.counts[i],), files.dim, files.provenance)
        for batch in iter_vectors(single, column, batch_size):
            first = bounds[i] + batch.start
            a, b = np.searchsorted(row_ids, [first, first + len(batch.vectors)])
            out[a:b] = batch.vectors[row_ids[a:b] - first]
    return out


def _footer(path: str) -> tuple[pa.Schema, int]:
    try:
        with parquet_file(path) as parquet:
            return parquet.schema_arrow, parquet.metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise read_error(path, exc) from exc


def _to_numpy(array: pa.Array, dim: int) -> np.ndarray:
    """A fixed_size_list column -> one float32 row per slot (C-contiguous). It reads the child values in the
    array's window, not ``flatten()``, which skips null slots and would shift every later row onto the wrong
    row id; a null slot reads as zeros."""
    values = array.values.slice(array.offset * dim, len(array) * dim).to_numpy(zero_copy_only=False)
    vectors = np.ascontiguousarray(values.reshape(len(array), dim), dtype=np.float32)
    if array.null_count:
        vectors = vectors.copy() if not vectors.flags.writeable else vectors
        vectors[~np.asarray(array.is_valid(), dtype=bool)] = 0
    return vectors


def read_error(path: str, exc: Exception) -> EmbeddingsReadError:
    """The error for an embeddings file that cannot be read: missing (moved or deleted), or damaged."""
    if isinstance(exc, FileNotFoundError) or not storage.exists(path):
        return EmbeddingsReadError(
            f"{path}: embeddings file missing (moved or deleted since it was listed); fix: put it back, or "
            "rebuild the index from where the embeddings are now (mmembed index --embeddings DIR --overwrite)"
        )
    return EmbeddingsReadError(
        f"{path}: not a readable Parquet embeddings file ({exc}); it may be truncated by an interrupted job: "
        "re-run the embed job for that shard with --overwrite, or delete the file"
    )


def _mixed_message(groups: dict[tuple, list[str]]) -> str:
    parts = []
    for identity, paths in groups.items():
        fields = dict(identity)
        label = ", ".join(f"{k}={fields[k]}" for k in ("model", "weights", "checkpoint_sha256", "dim"))
        shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
        parts.append(f"[{label}]: {shown}")
    return (
        "embeddings come from different models or weights and cannot share one index: "
        + "; ".join(parts)
        + ". Re-embed with one model, or index each group separately."
    )
