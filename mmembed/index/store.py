"""The layout of an index dir (local or an object-store URL) and its writers: index files, ids, infos.json.

``infos.json`` is the one pointer to an index's files: it names them (``indexes.<modality>.file``,
``ivfdata_file``, ``ids_file``) and is written last, atomically, so its presence marks a complete index and
replacing it switches every reader from one complete version to the next. A fresh build writes generation 0
under the plain names (``image.index``, ``text.index``, ``image.ivfdata``, ``ids.parquet``, ``keywords.sqlite``);
each ``append`` writes generation N under new names (``image.g00001.index`` ...), switches ``infos.json`` to
them, then removes the old generation, so a crash at any point leaves either the old or the new version whole
(never a file changed in place). Every file goes through ``mmembed.storage``; faiss, which only writes local
files, writes a local copy that is then published.

``text.index`` is absent when the embeddings hold no text vectors (``infos.json`` then says why under
``text_index_skipped``); ``ids.parquet``'s ``has_text`` marks the rows a text-index search may return.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.index.reader import SAMPLE_COLUMNS

log = logging.getLogger(__name__)
INDEX_FILES = {"image": "image.index", "text": "text.index"}  # generation 0's names
IDS_FILE = "ids.parquet"
KEYWORDS_FILE = "keywords.sqlite"  # the captions' full-text index (``mmembed.index.keywords``)
INFOS_FILE = "infos.json"
FORMAT_VERSION = 1
# Every file name of the layout, any generation: what a switch to a new generation may leave behind.
_LAYOUT_NAME = re.compile(
    r"^(?:(?:image|text)(?:\.g\d{5})?\.(?:index|ivfdata)|ids(?:\.g\d{5})?\.parquet|keywords(?:\.g\d{5})?\.sqlite)$"
)
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
        pa.field("metadata", pa.string()),  # the sample's json member, as JSON text (for --where)
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("similarity", pa.float32()),  # cosine(image, text); null for an image-only sample
    ]
)
# The columns above that ids files written before ``--where`` existed lack: such an index keeps its schema on
# append (a new generation cannot know the old rows' values) and ``--where`` on them asks for a rebuild.
LEGACY_IDS_SCHEMA = pa.schema([f for f in IDS_SCHEMA if f.name not in SAMPLE_COLUMNS])


def base_name(url: str | Path) -> str:
    """The last component of a local path or an object-store URL (``s3://b/emb/x.parquet`` -> ``x.parquet``)."""
    url = str(url)
    return os.path.basename(url) if storage.is_local(url) else posixpath.basename(url.rstrip("/"))


def generation_name(name: str, generation: int) -> str:
    """``name`` (``image.index``, ``image.ivfdata``, ``ids.parquet``) as generation ``generation`` calls it:
    the name itself for 0 (a fresh build), ``image.g00003.index`` for 3."""
    if not generation:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.g{generation:05d}.{ext}"


def ids_name(infos: dict[str, Any]) -> str:
    """The ids file of the generation ``infos`` points to."""
    return infos.get("ids_file", IDS_FILE)


def keywords_name(infos: dict[str, Any]) -> str | None:
    """The keyword index file of the generation ``infos`` points to; None for an index built before it existed."""
    return infos.get("keywords_file")


def index_file_names(infos: dict[str, Any]) -> list[str]:
    """Every file ``infos`` points to besides itself: the ids file, the keyword index, each index and its
    ``.ivfdata``."""
    names = [ids_name(infos), *([keywords_name(infos)] if keywords_name(infos) else [])]
    for entry in infos["indexes"].values():
        names += [entry["file"], *([entry["ivfdata_file"]] if entry.get("ivfdata_file") else [])]
    return names


def write_index(index: faiss.Index, url: str) -> int:
    """Save ``index`` at ``url`` atomically (faiss writes a local file, which is then published); its bytes."""
    with storage.staged_output(url) as local:
        faiss.write_index(index, local)
        return os.path.getsize(local)


def read_index(path: str, mmap: bool = True) -> faiss.Index:
    """Load an index from a LOCAL path (faiss reads local files; ``mmembed.index.cache`` fetches remote ones).
    With ``mmap`` IVF lists (or flat/HNSW vectors) stay on disk, mapped read-only."""
    if storage.info(path) is None:
        raise ConfigError(f"{path}: index file missing; build the index first (or the build did not finish)")
    if not mmap:  # a separate .ivfdata is opened read-write from beside the .index file
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)
    fourcc = storage.read_bytes(path, 0, 4)
    # Flat / HNSW: map the stored vectors; anything else (IVF): map the inverted lists from the .index file.
    flag = faiss.IO_FLAG_MMAP_IFC if fourcc in _FLAT_CODES_FOURCC else faiss.IO_FLAG_MMAP
    return _map_ondisk_lists(faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY), str(path))


def ondisk_lists(index: faiss.Index) -> faiss.OnDiskInvertedLists | None:
    """The on-disk inverted lists (a separate ``.ivfdata`` file) of a merged IVF index; None for any other."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def ondisk_data_name(path: str) -> str | None:
    """The ``.ivfdata`` file name the LOCAL index file ``path`` records (None without one), read without
    opening the data: readers take that name from beside the ``.index`` file."""
    lists = ondisk_lists(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY))
    return None if lists is None else base_name(lists.filename)


def _map_ondisk_lists(index: faiss.Index, path: str) -> faiss.Index:
    """Map the separate ``.ivfdata`` file of a merged (sharded) IVF index, which faiss leaves unmapped under
    IO_FLAG_MMAP; like IO_FLAG_ONDISK_SAME_DIR it is taken from beside the .index file, so the dir can move."""
    lists = ondisk_lists(index)
    if lists is not None and lists.ptr is None and lists.totsize > 0:
        data = os.path.join(os.path.dirname(os.path.abspath(path)), base_name(lists.filename))
        if storage.info(data) is None:
            raise ConfigError(f"{data}: inverted lists file of {path} missing; keep it beside the .index file")
        lists.filename = data
        lists.do_mmap()
    return index


def write_ids(url: str, tables: Iterable[pa.Table], start: int = 0, keep_from: str | None = None) -> int:
    """Stream id tables into ``url`` (atomically) with row ids from ``start``; ``keep_from`` copies an existing
    ids file first (one written before ``has_text`` existed gets True: its text index held a vector for every
    row; one written before the ``SAMPLE_COLUMNS`` existed keeps its columns, see ``ids_schema``). Returns the
    rows added."""
    added = 0
    schema = IDS_SCHEMA if keep_from is None else ids_schema(keep_from)

    def write(sink: IO[bytes]) -> None:
        nonlocal added
        row = start
        with pq.ParquetWriter(sink, schema) as writer:
            if keep_from is not None:
                _copy_ids(keep_from, writer, schema)
            for table in tables:
                ids = pa.array(range(row, row + table.num_rows), type=pa.int64())
                writer.write_table(table.select(schema.names[1:]).add_column(0, "row_id", ids).cast(schema))
                row += table.num_rows
        added = row - start

    storage.write_atomic(url, write)
    return added


def ids_schema(url: str) -> pa.Schema:
    """The schema an append keeps for the ids file at ``url``: ``IDS_SCHEMA``, or ``LEGACY_IDS_SCHEMA`` when the
    file lacks the ``SAMPLE_COLUMNS`` (written before they existed; only a rebuild can fill them for its rows)."""
    with storage.open_read(url) as source:
        names = pq.ParquetFile(source).schema_arrow.names
    if all(name in names for name in SAMPLE_COLUMNS):
        return IDS_SCHEMA
    log.warning(
        "%s has no %s columns (written by an older mmembed): appended rows leave them out too, and --where "
        "cannot filter on them until the index is rebuilt (mmembed index --embeddings DIR --out DIR --overwrite)",
        url,
        "/".join(SAMPLE_COLUMNS),
    )
    return LEGACY_IDS_SCHEMA


def _copy_ids(url: str, writer: pq.ParquetWriter, schema: pa.Schema) -> None:
    """Copy an ids file's rows into ``writer`` in bounded batches, adding ``has_text`` where it is missing."""
    with storage.open_read(url) as source:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=65_536):
            if "has_text" not in batch.schema.names:
                batch = batch.append_column("has_text", pa.array(np.ones(batch.num_rows, dtype=bool)))
            writer.write_batch(batch.select(schema.names).cast(schema))


def read_text_mask(url: str) -> np.ndarray:
    """``has_text`` of every row of an ids file (bool per row id); all True for a file written before the
    column existed, when every row had a text vector."""
    with storage.open_read(url) as source:
        parquet = pq.ParquetFile(source)
        if "has_text" not in parquet.schema_arrow.names:
            return np.ones(parquet.metadata.num_rows, dtype=bool)
        column = parquet.read(columns=["has_text"]).column("has_text")
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=bool)


def write_infos(index_dir: str, infos: dict[str, Any]) -> None:
    """Write ``infos.json`` atomically: the switch that makes the files it names the index."""
    storage.write_bytes(storage.join(str(index_dir), INFOS_FILE), json.dumps(infos, indent=2, sort_keys=True).encode())


def read_infos(index_dir: str | Path) -> dict[str, Any]:
    """An index dir's ``infos.json``; a ConfigError naming the dir when there is none (not built, or the
    bucket or folder is missing)."""
    url = storage.join(str(index_dir), INFOS_FILE)
    try:
        infos = json.loads(storage.read_bytes(url))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{index_dir}: no {INFOS_FILE}; not a complete mmembed index dir (build it first): {exc}"
        ) from exc
    if infos.get("format_version") != FORMAT_VERSION:
        raise ConfigError(f"{url}: index format {infos.get('format_version')}, expected {FORMAT_VERSION}; rebuild")
    return infos


def prepare_dir(index_dir: str | Path, overwrite: bool) -> str:
    """Create the index dir (local) and return it as a URL; refuse to replace a complete index unless
    ``overwrite``."""
    folder = str(index_dir)
    infos = storage.join(folder, INFOS_FILE)
    if storage.exists(infos) and not overwrite:
        raise ConfigError(f"{folder} already holds an index; fix: add --overwrite to rebuild it, or --append new files")
    storage.make_dirs(folder)
    storage.delete([infos])  # the old index is incomplete from here until the new infos
    return folder


def remove_unreferenced(index_dir: str, infos: dict[str, Any]) -> list[str]:
    """Delete the layout's files that ``infos`` no longer names (an older generation, or a crashed append's
    unfinished one); other files in the dir are left alone. Returns the removed URLs."""
    keep = set(index_file_names(infos))
    stale = [
        url
        for url in storage.glob(storage.join(index_dir, "*"))
        if _LAYOUT_NAME.match(base_name(url)) and base_name(url) not in keep
    ]
    storage.delete(stale)
    return stale


def remove_leftovers(index_dir: str) -> None:
    """Delete what killed writers left in a local index dir: hidden temporaries of atomic writes, and staging
    folders (``storage.staging_dir``) with the copies in them (an ``.ivfdata`` copy is as large as the lists).
    Only for a dir no other process is writing: the next append's first step."""
    storage.remove_temporaries(index_dir)


def remove_folder(url: str) -> None:
    """Delete a folder's files (it holds no sub-folders), and the folder itself when local."""
    storage.delete(storage.glob(storage.join(url, "*")))
    if storage.is_local(url):
        with contextlib.suppress(OSError):
            os.rmdir(storage.local_path(url))
