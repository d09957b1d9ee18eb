"""Per-sample facts for the server: (shard, key) -> row id, and the metadata columns the ids table lacks.

A sample is (shard, key): two shards may hold the same key. Samples are looked up by binary search over the
(shard, key) columns sorted once at start (Arrow memory, no Python dict of millions of strings). Metadata,
width, height and sha256 come from the embed job's Parquet files listed in infos.json, read one file (= one
shard) at a time and kept in a small LRU; row ids map to files by the row counts recorded there. If those
files moved, they are looked for in ``<index>/../embeddings/`` (the index's URL as given: a bucket's index
finds the embeddings beside it in the bucket); if absent, items are still served from ids.parquet, without
those columns. Every file is read through ``mmembed.storage``, so any of them may be local or in an object
store; an embeddings file is read only for its small columns (Parquet column chunks, not the vectors).
"""

from __future__ import annotations

import bisect
import logging
import os
import posixpath
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmembed import storage
from mmembed.index import IndexSet
from mmembed.outputs import EMBEDDINGS_DIR
from mmembed.search import parse_metadata

log = logging.getLogger(__name__)
EXTRA_COLUMNS = ("key", "metadata", "width", "height", "sha256")
READ_BLOCK = 1024 * 1024  # range size for remote Parquet reads: a column chunk, not a whole file, per request


class _SortedSamples:
    """A read-only sequence view of sorted (shard, key) Arrow columns, for ``bisect``."""

    def __init__(self, shards: pa.Array, keys: pa.Array) -> None:
        self.shards = shards
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[str, str]:
        return self.shards[i].as_py(), self.keys[i].as_py()


class Catalog:
    """Look up samples by (shard, key) or row id in one opened index (moved embeddings files are looked for
    beside ``index.url``, where the index lives, not beside a local cache of it)."""

    def __init__(self, index: IndexSet, cached_files: int = 64) -> None:
        self.index = index
        ids = read_parquet(str(index.ids_path), ["shard", "key"]).combine_chunks()
        self._order = pc.sort_indices(ids, sort_keys=[("shard", "ascending"), ("key", "ascending")]).to_numpy()
        ordered = ids.take(pa.array(self._order))
        self._sorted = _SortedSamples(ordered.column("shard").chunk(0), ordered.column("key").chunk(0))
        sources = index.infos.get("sources", {}).get("files", [])
        self._files = [self._candidates(s["path"]) for s in sources]
        self._starts = np.cumsum([0] + [int(s["rows"]) for s in sources])
        self._cache: OrderedDict[int, pa.Table | None] = OrderedDict()
        self._cached_files = cached_files
        self._lock = threading.Lock()
        index.lookup(np.zeros(0, np.int64))  # load ids.parquet now, not in the first concurrent requests

    @property
    def count(self) -> int:
        return len(self._sorted)

    def row_id(self, shard: str, key: str) -> int | None:
        """The row id of sample (``shard``, ``key``), or None when the index has no such sample."""
        i = bisect.bisect_left(self._sorted, (shard, key))
        if i < len(self._sorted) and self._sorted[i] == (shard, key):
            return int(self._order[i])
        return None

    def rows(self, row_ids: list[int]) -> list[dict[str, Any]]:
        """ids.parquet rows (row_id, key, shard, offset, caption, url) plus the metadata columns, in order."""
        base = self.index.lookup(np.asarray(row_ids, np.int64)).to_pylist()
        for row in base:
            row.update(self.extras(row["row_id"], row["key"]))
        return base

    def extras(self, row_id: int, key: str) -> dict[str, Any]:
        """metadata (parsed JSON), width, height, sha256 of one row; None each where unknown."""
        empty = {"metadata": None, "width": None, "height": None, "sha256": None}
        f = int(np.searchsorted(self._starts, row_id, side="right")) - 1
        if not 0 <= f < len(self._files):
            return empty
        table = self._file_table(f)
        local = row_id - int(self._starts[f])
        if table is None or local >= table.num_rows:
            return empty
        row = table.slice(local, 1).to_pylist()[0]
        if row["key"] != key:  # the file was rewritten since the index was built
            return empty
        return {
            "metadata": parse_metadata(row["metadata"]),
            "width": row["width"],
            "height": row["height"],
            "sha256": row["sha256"],
        }

    def _file_table(self, f: int) -> pa.Table | None:
        with self._lock:
            if f in self._cache:
                self._cache.move_to_end(f)
                return self._cache[f]
        table = self._read_extras(self._files[f])
        with self._lock:
            self._cache[f] = table
            while len(self._cache) > self._cached_files:
                self._cache.popitem(last=False)
        return table

    def _read_extras(self, candidates: list[str]) -> pa.Table | None:
        """The metadata columns of the first candidate embeddings file that exists; None (logged) when none
        does or it cannot be read: its samples are then served without metadata."""
        for url in candidates:
            try:
                return read_parquet(url, list(EXTRA_COLUMNS))
            except FileNotFoundError:
                continue
            except (OSError, pa.ArrowException, KeyError) as exc:
                log.warning("cannot read metadata from %s (%s); items are served without it", url, exc)
                return None
        log.warning("embeddings file not found at %s; its samples are served without metadata", " or ".join(candidates))
        return None

    def _candidates(self, path: str) -> list[str]:
        """Where an embeddings file may be: as recorded, else beside the index (``<index>/../embeddings/<name>``)."""
        moved = storage.join(_parent(self.index.url), EMBEDDINGS_DIR, posixpath.basename(path))
        return list(dict.fromkeys([path, moved]))


def read_parquet(url: str, columns: list[str]) -> pa.Table:
    """``columns`` of the Parquet file at ``url`` (local or remote: ranged reads of just those columns)."""
    with storage.open_read(url, block_size=READ_BLOCK) as f:
        return pq.read_table(f, columns=columns)


def _parent(url: str) -> str:
    """The folder holding ``url`` (a local path made absolute; an object-store URL cut at its last ``/``)."""
    if storage.is_local(url):
        return os.path.dirname(os.path.abspath(storage.local_path(url).rstrip(os.sep)))
    return posixpath.dirname(url.rstrip("/"))
