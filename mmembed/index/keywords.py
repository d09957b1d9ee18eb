"""Keyword search over captions: a SQLite FTS5 index (``keywords.sqlite``) beside the vector indexes.

Layout: one contentless FTS5 table whose rowid is the row id (the captions themselves stay in the ids table);
only rows with a non-empty caption are in it. Tokenizer ``porter unicode61 remove_diacritics 2``: case and
accents folded, English stems ("dogs" finds "dog", "café" finds "cafe").

Ranking: BM25 (FTS5's ``bm25()``, k1 = 1.2, b = 0.75); a hit's score is minus the bm25 value, so higher is
better, as for vector search. Query syntax (``fts_query``): plain words must all appear, in any order (FTS5's
implicit AND; punctuation in them is harmless), ranked by BM25; a query that uses FTS5 syntax, i.e. a "quoted
phrase", a prefix*, parentheses or AND / OR / NOT / NEAR, is passed to FTS5 as written, and invalid syntax is
a ConfigError saying so. Plain words are ANDed rather than ORed for cost: BM25 is computed for every matching
caption (FTS5 has no top-k pruning, about 2.5 us a match), and a common word ORed in makes most captions match.

Files: written through ``mmembed.storage.staged_output`` (a local file, published atomically, local or object
store). An append copies the current generation into staging, adds the new rows and publishes it under the
next generation's name, like the other index files. Readers open it read-only and immutable (a published
generation never changes), one connection per thread; a remote index's copy comes through the index cache.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.index.reader import EmbeddingFiles, iter_columns
from mmembed.index.store import KEYWORDS_FILE, base_name, generation_name, ids_name, keywords_name

TABLE = "captions"
_CREATE = (
    f"CREATE VIRTUAL TABLE {TABLE} USING fts5(caption, content='', tokenize='porter unicode61 remove_diacritics 2')"
)
_SYNTAX = re.compile(r'["*()^]|\b(?:AND|OR|NOT|NEAR)\b')  # a query that uses FTS5 syntax on purpose
_FETCH = 1024  # matches read at a time while skipping rows a filter excludes
SYNTAX_HELP = 'plain words, "an exact phrase", a prefix* (car*), or AND / OR / NOT between terms'


def write_keywords(url: str, captions: Iterable[pa.Table], start: int = 0, keep_from: str | None = None) -> int:
    """Index the ``caption`` column of ``captions`` (tables in row-id order, from ``start``) into ``url``,
    atomically; ``keep_from`` (a keyword index of the rows before ``start``) is copied first. Returns the
    captions added (rows without one are skipped)."""
    added = 0
    with storage.staged_output(url) as local:
        if keep_from is not None:
            storage.download(keep_from, local)
        con = sqlite3.connect(local)
        try:
            con.execute("PRAGMA journal_mode=OFF")
            con.execute("PRAGMA synchronous=OFF")
            if keep_from is None:
                con.execute(_CREATE)
            row = start
            for table in captions:
                texts = table.column("caption").to_pylist()
                rows = [(row + i, text) for i, text in enumerate(texts) if text]
                con.executemany(f"INSERT INTO {TABLE}(rowid, caption) VALUES (?, ?)", rows)
                added += len(rows)
                row += len(texts)
            con.execute(f"INSERT INTO {TABLE}({TABLE}) VALUES ('optimize')")  # one b-tree: faster queries
            con.commit()
        finally:
            con.close()
    return added


def build_keywords(out: str, files: EmbeddingFiles, batch_size: int = 65_536) -> dict[str, Any]:
    """Write a fresh build's keyword index of ``files`` into the index dir ``out``; its infos.json fields."""
    rows = write_keywords(storage.join(out, KEYWORDS_FILE), iter_columns(files, ("caption",), batch_size))
    return {"keywords_file": KEYWORDS_FILE, "keyword_rows": rows}


def append_keywords(
    folder: str, infos: dict[str, Any], generation: int, files: EmbeddingFiles, batch_size: int = 65_536
) -> dict[str, Any]:
    """Write generation ``generation``'s keyword index: the one ``infos`` names plus the captions of ``files``
    (row ids from ``infos["count"]``); an index built before keyword search gets one over its ids file's
    captions too. Returns the infos.json fields that change."""
    url = storage.join(folder, generation_name(KEYWORDS_FILE, generation))
    new = iter_columns(files, ("caption",), batch_size)
    old = keywords_name(infos)
    if old is not None:
        added = write_keywords(url, new, infos["count"], keep_from=storage.join(folder, old))
        rows = infos.get("keyword_rows", 0) + added
    else:
        rows = write_keywords(url, itertools.chain(ids_captions(storage.join(folder, ids_name(infos))), new))
    return {"keywords_file": base_name(url), "keyword_rows": rows}


def ids_captions(url: str, batch_size: int = 65_536) -> Iterator[pa.Table]:
    """The ``caption`` column of an ids file in row-id order, in batches (to index an older index's rows)."""
    with storage.open_read(url) as source:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=batch_size, columns=["caption"]):
            yield pa.Table.from_batches([batch])


def fts_query(text: str) -> str:
    """The FTS5 query for the user's ``text``: plain words become quoted terms side by side (all required,
    punctuation harmless); text that uses FTS5 syntax (``_SYNTAX``) is kept as written."""
    words = text.split()
    if not words:
        raise ConfigError("keyword query is empty; give some words to look for in the captions")
    if _SYNTAX.search(text):
        return text
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


class KeywordIndex:
    """A built keyword index (a LOCAL file) opened for search; thread-safe (one read-only connection per
    thread)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(f"file:{quote(self.path)}?mode=ro&immutable=1", uri=True)
            self._local.con = con
        return con

    @property
    def count(self) -> int:
        """How many captions the index holds."""
        return int(self._connection().execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    def search(self, text: str, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best captions for ``text`` by BM25 -> (scores, row_ids), best first, fewer when fewer
        match; ``allowed`` (a bool per row id) keeps only those rows, the top-k taken among them."""
        query = fts_query(text)
        sql = f"SELECT rowid, -bm25({TABLE}) FROM {TABLE} WHERE {TABLE} MATCH ? ORDER BY rank"
        found: list[tuple[int, float]] = []
        try:
            if allowed is None:
                found = self._connection().execute(f"{sql} LIMIT ?", (query, k)).fetchall()
            else:
                cursor = self._connection().execute(sql, (query,))
                while len(found) < k:
                    chunk = cursor.fetchmany(_FETCH)
                    if not chunk:
                        break
                    found += [(row, score) for row, score in chunk if row < len(allowed) and allowed[row]]
                cursor.close()
        except sqlite3.OperationalError as exc:
            if query != text:  # plain words were quoted: a failure is not the user's syntax
                raise
            raise ConfigError(f"keyword query {text!r} is not valid ({exc}); write {SYNTAX_HELP}") from None
        found = found[:k]
        ids = np.array([row for row, _ in found], dtype=np.int64)
        scores = np.array([score for _, score in found], dtype=np.float32)
        return scores, ids
