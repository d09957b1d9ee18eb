"""Searcher: text and image queries -> ranked samples with scores and metadata, over a built index dir.

Directions: ``target="image"`` searches the image index (text -> image, image -> image);
``target="text"`` searches the text index (image -> text, text -> text). Queries are encoded with
the model recorded in the index's provenance, so they live in the same embedding space.

Modes of a text query: ``"vector"`` (the embedding, as above), ``"keyword"`` (BM25 over the captions,
``mmembed.index.keywords``; no model is loaded) and ``"hybrid"``: both rankings fused by reciprocal rank
fusion, score(row) = sum over the rankings holding it of 1 / (``RRF_K`` + rank), ``RRF_K`` = 60 (Cormack et
al. 2009), each ranking cut at ``HYBRID_DEPTH`` candidates (at least k). A hit's ``score`` is the cosine
similarity in vector mode, the BM25 score in keyword mode and the fused score in hybrid mode.

``where`` (every mode and query kind) keeps only the samples a condition holds for (``mmembed.index.where``);
vector search takes it as a faiss bitmap selector, so top-k is taken over those samples only, never filtered
afterwards (``mmembed.index.selection``). Recent conditions' row sets are kept (``WHERE_CACHE``).

Image-only samples (embedded without a caption) are found by ``target="image"`` like any other, with a None
caption; ``target="text"`` and keyword search never return them, and ``target="text"`` fails before encoding
anything when the index has no text vectors at all (embedded with ``--captions none``).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmembed import storage
from mmembed.config import DEFAULT_TEXT_WEIGHT, MAX_K, SEARCH_MODES, TARGETS, ConfigError, EncoderConfig
from mmembed.index import IndexSet, load_index
from mmembed.index.selection import RowFilter
from mmembed.index.where import rows_matching
from mmembed.query import QueryEncoder, fuse

RRF_K = 60
HYBRID_DEPTH = 100
WHERE_CACHE = 32
ImageQuery = str | Path | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class SearchHit:
    """One result: the sample's key and where it lives, its score (see the module doc: cosine, BM25 or
    fused), caption, source URL, json metadata (a value), size, and image-caption cosine (None for an
    image-only sample, and for ``metadata``/``width``/``height``/``similarity`` in an index built before
    the ids table held them)."""

    rank: int
    score: float
    row_id: int
    key: str
    shard: str
    offset: int
    caption: str | None
    url: str | None
    metadata: Any = None
    width: int | None = None
    height: int | None = None
    similarity: float | None = None

    @classmethod
    def from_row(cls, rank: int, score: float, row: dict[str, Any]) -> SearchHit:
        """A hit from an ids-table row (``IndexSet.lookup(...).to_pylist()``), its metadata text parsed."""
        return cls(
            rank,
            float(score),
            int(row["row_id"]),
            row["key"],
            row["shard"],
            row["offset"],
            row["caption"],
            row["url"],
            parse_metadata(row.get("metadata")),
            row.get("width"),
            row.get("height"),
            row.get("similarity"),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """Search one index dir; the query encoder is loaded on first use (vector queries and keyword search need
    none). Thread-safe for searches once the encoder is loaded."""

    def __init__(self, index: IndexSet, encoder: EncoderConfig | None = None, device: str = "auto") -> None:
        self.index = index
        self._override = encoder
        self._device = device
        self._encoder: QueryEncoder | None = None
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_dir(cls, path: str | Path, encoder: EncoderConfig | None = None, device: str = "auto") -> Searcher:
        """Open ``path`` (an ``mmembed index`` output, local or an object-store URL fetched into the local
        cache); ``encoder`` overrides the recorded model (checked)."""
        return cls(load_index(path), encoder, device)

    @property
    def encoder(self) -> QueryEncoder:
        if self._encoder is None:
            where = f"index {self.index.url}"
            self._encoder = QueryEncoder.for_provenance(
                self.index.infos["provenance"], where, self._override, self._device
            )
        return self._encoder

    def search_text(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        target: str = "image",
        where: str | None = None,
        mode: str = "vector",
    ) -> list[list[SearchHit]]:
        """Text queries -> for each, the k best images (or captions with ``target='text'``) by ``mode``
        (vector, keyword or hybrid), among the samples ``where`` holds for."""
        texts = [queries] if isinstance(queries, str) else list(queries)
        self._check(k, target, mode)
        self.rows_where(where)  # a bad condition is refused before the model loads (the result is kept)
        vectors = None if mode == "keyword" else self.encoder.encode_texts(texts)
        return self.search_encoded(texts, vectors, k, target, where, mode)

    def search_encoded(
        self,
        texts: Sequence[str],
        vectors: np.ndarray | None,
        k: int = 10,
        target: str = "image",
        where: str | None = None,
        mode: str = "vector",
    ) -> list[list[SearchHit]]:
        """``search_text`` for queries already encoded (``vectors``, one per text; None in keyword mode, which
        needs none): for a caller that batches the model calls itself, as the server does."""
        self._check(k, target, mode)
        rows = self.rows_where(where)
        if mode == "keyword":
            return self._hits([self.index.keywords.search(text, k, rows) for text in texts])
        if vectors is None:
            raise ValueError(f"mode {mode!r} needs the queries' vectors")
        if mode == "vector":
            return self._hits(self._vector_search(vectors, k, target, rows))
        depth = max(k, HYBRID_DEPTH)
        by_vector = self._vector_search(vectors, depth, target, rows)
        by_keyword = [self.index.keywords.search(text, depth, rows) for text in texts]
        return self._hits([rrf([v[1], w[1]], k) for v, w in zip(by_vector, by_keyword, strict=True)])

    def search_image(
        self,
        images: ImageQuery | Sequence[ImageQuery],
        k: int = 10,
        target: str = "image",
        text: str | None = None,
        text_weight: float = DEFAULT_TEXT_WEIGHT,
        where: str | None = None,
    ) -> list[list[SearchHit]]:
        """Image queries: each a path, an object-store URL, file bytes, a PIL image or an H x W x 3 uint8
        array, alone or in a list; with ``text``, a composed query, ``text_weight`` of it from the text."""
        self._check(k, target, "vector")
        self.rows_where(where)  # a bad condition is refused before the model loads (the result is kept)
        items = [images] if isinstance(images, str | Path | bytes | Image.Image | np.ndarray) else list(images)
        vectors = self.encoder.encode_images([_image(item, i) for i, item in enumerate(items)])
        if text is not None:
            vectors = fuse(vectors, np.repeat(self.encoder.encode_texts([text]), len(vectors), axis=0), text_weight)
        return self.search_vectors(vectors, k, target, where)

    def search_vectors(
        self, vectors: np.ndarray, k: int = 10, target: str = "image", where: str | None = None
    ) -> list[list[SearchHit]]:
        """Already-encoded, L2-normalised query vectors -> ranked hits with metadata (caption None for an
        image-only sample), among the samples ``where`` holds for."""
        self._check(k, target, "vector")
        return self._hits(self._vector_search(vectors, k, target, self.rows_where(where)))

    def rows_where(self, where: str | None) -> np.ndarray | None:
        """The rows ``where`` holds for (a bool per row id; None: no condition), kept for the last
        ``WHERE_CACHE`` conditions; a ConfigError naming what is wrong in it."""
        if where is None:
            return None
        with self._lock:
            if where in self._rows:
                self._rows.move_to_end(where)
                return self._rows[where]
        rows = rows_matching(self.index, where)
        with self._lock:
            self._rows[where] = rows
            while len(self._rows) > WHERE_CACHE:
                self._rows.popitem(last=False)
        return rows

    def _vector_search(
        self, vectors: np.ndarray, k: int, target: str, rows: np.ndarray | None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (scores, row_ids) of the ``target`` index, among ``rows`` when given."""
        index = self.index.index_for(target)
        allowed: RowFilter | None = None if rows is None else index.restricted(rows)
        scores, row_ids = index.search(vectors, k, allowed)
        return [(s[i >= 0], i[i >= 0]) for s, i in zip(scores, row_ids, strict=True)]

    def _hits(self, ranked: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[list[SearchHit]]:
        """Per query (scores, row_ids) -> its SearchHits, the ids rows looked up in one go."""
        all_ids = np.concatenate([np.zeros(0, np.int64), *(ids for _, ids in ranked)])
        found = iter(self.index.lookup(all_ids).to_pylist())
        return [
            [SearchHit.from_row(rank, score, next(found)) for rank, score in enumerate(scores.tolist(), start=1)]
            for scores, _ in ranked
        ]

    def _check(self, k: int, target: str, mode: str) -> None:
        """A ConfigError for a k out of range, an unknown mode or target, or one this index cannot search (no
        text vectors, no keyword index), raised before a query is encoded."""
        if not 1 <= k <= MAX_K:
            raise ConfigError(f"k must be between 1 and {MAX_K}, got {k}")
        if mode not in SEARCH_MODES:
            raise ConfigError(f"mode {mode!r} is not one of {SEARCH_MODES}")
        if target not in TARGETS:
            raise ConfigError(f"target {target!r} is not one of {TARGETS}")
        if mode != "keyword":
            self.index.index_for(target)
        if mode != "vector":
            self.index.keywords  # noqa: B018 - raises the fix for an index without a keyword index


def rrf(rankings: Sequence[np.ndarray], k: int, c: int = RRF_K) -> tuple[np.ndarray, np.ndarray]:
    """Reciprocal rank fusion of row-id rankings (best first) -> the k best (scores, row_ids): a row scores
    the sum of 1 / (c + rank) over the rankings that hold it; ties keep the earlier ranking's order."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(np.asarray(ranking).tolist(), start=1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (c + rank)
    best = sorted(fused.items(), key=lambda item: -item[1])[:k]
    return np.array([s for _, s in best], np.float32), np.array([r for r, _ in best], np.int64)


def parse_metadata(text: str | None) -> Any:
    """A sample's json member (JSON text) as a value; NaN and +-Infinity (Python writes them, JSON has no such
    values) become None so every response stays valid JSON; text that does not parse is returned as is."""
    if text is None:
        return None
    try:
        return json.loads(text, parse_constant=lambda _: None)
    except json.JSONDecodeError:
        return text


def _image(item: ImageQuery, i: int) -> Image.Image | tuple[bytes, str]:
    """One image query as a PIL image, or (file bytes, its name) for the encoder to decode."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
            raise ConfigError(
                f"query image {i}: an array must be height x width x 3 uint8 (RGB), got {item.shape} {item.dtype}"
            )
        return Image.fromarray(item, "RGB")
    if isinstance(item, bytes):
        return item, f"upload {i}"
    return storage.read_bytes(str(item)), str(item)
