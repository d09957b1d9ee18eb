"""The on-disk layout of an index dir and its atomic writers: <modality>.index, ids.parquet, infos.json.

Every file is written under a temporary name and moved into place with ``os.replace``; ``infos.json``
is written last, so its presence marks a complete index. ``text.index`` is absent when the embeddings hold
no text vectors (``infos.json`` then says why under ``text_index_skipped``); ``ids.parquet``'s ``has_text``
marks the rows a text-index search may return.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmembed.config import ConfigError

INDEX_FILES = {"image": "image.index", "text": "text.index"}
IDS_FILE = "ids.parquet"
INFOS_FILE = "infos.json"
FORMAT_VERSION = 1
_FLAT_CODES_FOURCC = (b"IxFI", b"IxF2", b"IxFl", b"IHNf")  # faiss header of IndexFlatIP/L2 and IndexHNSWFlat
IDS_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.int64(), nullable=False),  # the faiss label in both indexes
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("url", pa.string()),
        pa.field("has_text", pa.bool_(), nullable=False),  # holds a text vector (False: an image-only sample)
    ]
)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temp path beside ``path``; on success move it into place, on error remove it."""
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_index(index: faiss.Index, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, tmp)


def read_index(path: str | Path, mmap: bool = True) -> faiss.Index:
    """Load an index; with ``mmap`` IVF lists (or flat/HNSW vectors) stay on disk, mapped read-only."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: index file missing; build the index first (or the build did not finish)")
    if not mmap:  # a separate .ivfdata is opened read-write from beside the .index file
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    with open(path, "rb") as f:
        fourcc = f.read(4)
    # Flat / HNSW: map the stored vectors; anything else (IVF): map the inverted lists from the .index file.
    flag = faiss.IO_FLAG_MMAP_IFC if fourcc in _FLAT_CODES_FOURCC else faiss.IO_FLAG_MMAP
    return _map_ondisk_lists(faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY), Path(path))


def _map_ondisk_lists(index: faiss.Index, path: Path) -> faiss.Index:
    """Map the separate ``.ivfdata`` file of a merged (sharded) IVF index, which faiss leaves unmapped under
    IO_FLAG_MMAP; like IO_FLAG_ONDISK_SAME_DIR it is taken from beside the .index file, so the dir can move."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return index
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    if isinstance(lists, faiss.OnDiskInvertedLists) and lists.ptr is None and lists.totsize > 0:
        data = path.parent / Path(lists.filename).name
        if not data.is_file():
            raise ConfigError(f"{data}: inverted lists file of {path} missing; keep it beside the .index file")
        lists.filename = str(data)
        lists.do_mmap()
    return index


def write_ids(path: str | Path, tables: Iterable[pa.Table], start: int = 0, keep_from: str | Path | None = None) -> int:
    """Stream id tables into ``path`` with row ids from ``start``; ``keep_from`` copies an existing ids file first
    (one written before ``has_text`` existed gets True: its text index held a vector for every row)."""
    row = start
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, IDS_SCHEMA) as writer:
        if keep_from is not None:
            for batch in pq.ParquetFile(keep_from).iter_batches(batch_size=65_536):
                if "has_text" not in batch.schema.names:
                    batch = batch.append_column("has_text", pa.array(np.ones(batch.num_rows, dtype=bool)))
                writer.write_batch(batch.select(IDS_SCHEMA.names).cast(IDS_SCHEMA))
        for table in tables:
            ids = pa.array(range(row, row + table.num_rows), type=pa.int64())
            writer.write_table(table.select(IDS_SCHEMA.names[1:]).add_column(0, "row_id", ids).cast(IDS_SCHEMA))
            row += table.num_rows
    return row - start


def read_text_mask(path: str | Path) -> np.ndarray:
    """``has_text`` of every row of an ids file (bool per row id); all True for a file written before the
    column existed, when every row had a text vector."""
    parquet = pq.ParquetFile(path)
    if "has_text" not in parquet.schema_arrow.names:
        return np.ones(parquet.metadata.num_rows, dtype=bool)
    column = pq.read_table(path, columns=["has_text"]).column("has_text")
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=bool)


def write_infos(index_dir: str | Path, infos: dict[str, Any]) -> None:
    with atomic_path(Path(index_dir) / INFOS_FILE) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(infos, f, indent=2, sort_keys=True)


def read_infos(index_dir: str | Path) -> dict[str, Any]:
    path = Path(index_dir) / INFOS_FILE
    if not path.is_file():
        raise ConfigError(f"{index_dir}: no {INFOS_FILE}; not a complete mmembed index dir (build it first)")
    infos = json.loads(path.read_text(encoding="utf-8"))
    if infos.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{path}: index format {infos.get('format_version')}, expected {FORMAT_VERSION}; rebuild")
    return infos


def prepare_dir(index_dir: str | Path, overwrite: bool) -> Path:
    """Create the index dir; refuse to replace a complete index unless ``overwrite``."""
    folder = Path(index_dir)
    if (folder / INFOS_FILE).exists() and not overwrite:
        raise ConfigError(f"{folder} already holds an index; pass overwrite=True to rebuild it, or use append")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INFOS_FILE).unlink(missing_ok=True)  # the old index is incomplete from here until the new infos
    return folder
