"""Open a built index dir for search: both indexes with their tuned parameters, plus the row-id table.

A remote index dir (``s3://``, ``gs://``) is fetched once into a local cache (``mmembed.index.cache``) and
memory-mapped from there like a local one.

A text index searches only the rows that hold a text vector (``ids.parquet``'s ``has_text``; see
``mmembed.index.selection``); an index dir without one (no text vectors) refuses text-index searches with the
reason recorded at build time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmembed.config import ConfigError
from mmembed.index.cache import local_index_dir
from mmembed.index.keywords import KeywordIndex
from mmembed.index.selection import NO_TEXT, RowFilter, modality_filter, search
from mmembed.index.store import ids_name, keywords_name, read_index, read_infos, read_text_mask
from mmembed.index.tune import apply_params
from mmembed.schema import warn_if_random_weights

_SLICED_ROWS = 256  # lookups of up to this many rows slice them out rather than ``take`` them


class SearchIndex:
    """One modality's faiss index with its tuned search parameters applied; ``allowed`` limits what a search
    may return (the text index: rows with a text vector; None: every row)."""

    def __init__(self, index: faiss.Index, params: str, modality: str, allowed: RowFilter | None = None):
        self.index = index
        self.params = params
        self.modality = modality
        self.allowed = allowed
        apply_params(index, params)

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def restricted(self, rows: np.ndarray) -> RowFilter | None:
        """The rows a search may return when it is also limited to ``rows`` (a bool per row id, e.g. from
        ``mmembed.index.where.rows_matching``): both filters as one RowFilter (None: every row)."""
        rows = np.asarray(rows, dtype=bool)
        return RowFilter.of(rows if self.allowed is None else rows & self.allowed.allowed)

    def search(self, vectors: np.ndarray, k: int, rows: RowFilter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (inner product) for L2-normalised query vectors -> (scores, row_ids); -1 where fewer exist.
        ``rows`` (from ``restricted``) replaces the index's own filter: faiss takes it as an IDSelectorBitmap,
        so top-k is taken over the admitted rows only (``mmembed.index.selection``)."""
        queries = np.ascontiguousarray(np.atleast_2d(vectors), dtype=np.float32)
        if queries.shape[1] != self.index.d:
            raise ValueError(f"{self.modality} index expects {self.index.d}-d queries, got {queries.shape[1]}-d")
        return search(self.index, queries, k, self.allowed if rows is None else rows)


class IndexSet:
    """An index dir opened for search: ``image`` and ``text`` SearchIndexes (no ``text`` when the embeddings
    hold no text vectors), ``infos``, and id lookup. ``index_dir`` is the local folder the files are mapped
    from (the cached copy of a remote index), ``url`` where the index lives."""

    def __init__(
        self,
        index_dir: Path,
        infos: dict[str, Any],
        indexes: dict[str, SearchIndex],
        url: str | None = None,
        keywords: KeywordIndex | None = None,
    ) -> None:
        self.index_dir = index_dir
        self.infos = infos
        self.indexes = indexes
        self.url = url or str(index_dir)
        self._keywords = keywords
        self._ids: pa.Table | None = None

    @property
    def ids_path(self) -> Path:
        """The local ids file of the current generation (``infos.json``'s ``ids_file``)."""
        return self.index_dir / ids_name(self.infos)

    def index_path(self, modality: str) -> Path:
        """The local ``.index`` file of ``modality`` in the current generation."""
        return self.index_dir / self.infos["indexes"][modality]["file"]

    @property
    def image(self) -> SearchIndex:
        return self.indexes["image"]

    @property
    def text(self) -> SearchIndex:
        return self.index_for("text")

    @property
    def text_unavailable(self) -> str | None:
        """Why this dir has no text index (recorded at build time), or None when it has one."""
        return None if "text" in self.indexes else self.infos.get("text_index_skipped", NO_TEXT)

    def index_for(self, modality: str) -> SearchIndex:
        """The ``modality`` index; a ConfigError saying why when the dir has none (no text vectors)."""
        if modality not in self.indexes:
            reason = self.text_unavailable if modality == "text" else "not built"
            raise ConfigError(f"index {self.url} has no {modality} index: {reason}")
        return self.indexes[modality]

    def search(self, vectors: np.ndarray, k: int, modality: str = "image") -> tuple[np.ndarray, np.ndarray]:
        """Search the ``modality`` index (image vectors for text->image and image->image, text for ->text)."""
        return self.index_for(modality).search(vectors, k)

    @property
    def keywords(self) -> KeywordIndex:
        """The captions' keyword index (``mmembed.index.keywords``); a ConfigError with the fix for an index
        built before keyword search existed."""
        if self._keywords is None:
            raise ConfigError(
                f"index {self.url} has no keyword index (built before keyword search existed); fix: rebuild it "
                f"(mmembed index --embeddings DIR --out {self.url} --overwrite), or --append new embeddings to it"
            )
        return self._keywords

    @property
    def count(self) -> int:
        """How many rows (samples) the index holds."""
        return int(self.infos["count"])

    @property
    def ids(self) -> pa.Table:
        """The whole ids table (``IDS_SCHEMA``; an older index's lacks some columns), memory-mapped on first use."""
        if self._ids is None:
            self._ids = pq.read_table(self.ids_path, memory_map=True)
        return self._ids

    def lookup(self, row_ids: np.ndarray) -> pa.Table:
        """Rows of the ids table for ``row_ids`` in order; -1 dropped. A few rows (a search's hits) are sliced
        out, which costs nothing per table row; ``take`` on the multi-chunk mapped table would first join
        every chunk of each string column (milliseconds per call at 1M rows)."""
        flat = np.asarray(row_ids, dtype=np.int64).ravel()
        flat = flat[flat >= 0]
        if len(flat) and flat.max() >= self.ids.num_rows:
            raise IndexError(f"row id {int(flat.max())} out of range: index {self.url} has {self.ids.num_rows} rows")
        if len(flat) > _SLICED_ROWS:
            return self.ids.take(pa.array(flat))
        return pa.concat_tables([self.ids.slice(0, 0), *(self.ids.slice(row, 1) for row in flat.tolist())])


def load_index(index_dir: str | Path, mmap: bool = True) -> IndexSet:
    """Open an index dir, local or remote (fetched into the local cache first), with IVF lists memory-mapped
    by default, and check indexes, ids and infos agree."""
    url = str(index_dir)
    folder = local_index_dir(url)
    infos = read_infos(folder)
    has_text = read_text_mask(os.path.join(folder, ids_name(infos)))  # one flag per row
    if len(has_text) != infos["count"]:
        raise ConfigError(
            f"{url}: {len(has_text)} rows in {ids_name(infos)} but infos.json says {infos['count']}; rebuild"
        )
    indexes = {}
    for modality, entry in infos["indexes"].items():
        index = read_index(os.path.join(folder, entry["file"]), mmap=mmap)
        if index.ntotal != infos["count"]:
            raise ConfigError(
                f"{url}: {index.ntotal} vectors in {entry['file']} but infos.json says {infos['count']}; rebuild"
            )
        indexes[modality] = SearchIndex(index, entry["search_params"], modality, modality_filter(modality, has_text))
    keywords = keywords_name(infos)
    if keywords and not os.path.isfile(os.path.join(folder, keywords)):
        raise ConfigError(f"{url}: {keywords} named by infos.json is missing; rebuild the index")
    warn_if_random_weights(infos["provenance"], f"index {url}")
    found = KeywordIndex(os.path.join(folder, keywords)) if keywords else None
    return IndexSet(Path(folder), infos, indexes, url, found)
