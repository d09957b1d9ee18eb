"""Searcher: text and image queries -> ranked keys with scores and metadata, over a built index dir.

Directions: ``target="image"`` searches the image index (text -> image, image -> image);
``target="text"`` searches the text index (image -> text, text -> text). Queries are encoded with
the model recorded in the index's provenance, so they live in the same embedding space.

Image-only samples (embedded without a caption) are found by ``target="image"`` like any other, with a None
caption; ``target="text"`` never returns them, and fails before encoding anything when the index has no
text vectors at all (embedded with ``--captions none``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmembed import storage
from mmembed.config import MAX_K, TARGETS, ConfigError, EncoderConfig
from mmembed.index import IndexSet, load_index
from mmembed.query import QueryEncoder, fuse


@dataclass(frozen=True)
class SearchHit:
    """One result: the sample's key and where it lives, its score (cosine similarity) and caption."""

    rank: int
    score: float
    row_id: int
    key: str
    shard: str
    offset: int
    caption: str | None
    url: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """Search one index dir; the query encoder is loaded on first use (vector queries need none)."""

    def __init__(self, index: IndexSet, encoder: EncoderConfig | None = None, device: str = "auto") -> None:
        self.index = index
        self._override = encoder
        self._device = device
        self._encoder: QueryEncoder | None = None

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

    def search_text(self, queries: str | Sequence[str], k: int = 10, target: str = "image") -> list[list[SearchHit]]:
        """Text queries -> for each, the k best images (or captions with ``target='text'``)."""
        self._check_target(target)
        texts = [queries] if isinstance(queries, str) else list(queries)
        return self.search_vectors(self.encoder.encode_texts(texts), k, target)

    def search_image(
        self,
        images: str | Path | bytes | Sequence[str | Path | bytes],
        k: int = 10,
        target: str = "image",
        text: str | None = None,
        text_weight: float = 0.0,
    ) -> list[list[SearchHit]]:
        """Image queries (paths, object-store URLs or bytes); with ``text``, a composed query weighted by
        ``text_weight``."""
        self._check_target(target)
        items = [images] if isinstance(images, str | Path | bytes) else list(images)
        data = [item if isinstance(item, bytes) else storage.read_bytes(str(item)) for item in items]
        names = [f"upload {i}" if isinstance(item, bytes) else str(item) for i, item in enumerate(items)]
        vectors = self.encoder.encode_image_bytes(data, names)
        if text is not None:
            vectors = fuse(vectors, np.repeat(self.encoder.encode_texts([text]), len(vectors), axis=0), text_weight)
        return self.search_vectors(vectors, k, target)

    def search_vectors(self, vectors: np.ndarray, k: int = 10, target: str = "image") -> list[list[SearchHit]]:
        """Already-encoded, L2-normalised query vectors -> ranked hits with metadata (caption None for an
        image-only sample)."""
        self._check_target(target)
        if not 1 <= k <= MAX_K:
            raise ConfigError(f"k must be between 1 and {MAX_K}, got {k}")
        scores, row_ids = self.index.search(vectors, k, target)
        rows = self.index.lookup(row_ids).to_pylist()
        found = iter(rows)
        results = []
        for query_scores, query_ids in zip(scores, row_ids, strict=True):
            hits = []
            for rank, (score, row_id) in enumerate(zip(query_scores, query_ids, strict=True), start=1):
                if row_id < 0:
                    continue
                row = next(found)
                hits.append(
                    SearchHit(
                        rank,
                        float(score),
                        int(row_id),
                        row["key"],
                        row["shard"],
                        row["offset"],
                        row["caption"],
                        row["url"],
                    )
                )
            results.append(hits)
        return results

    def _check_target(self, target: str) -> None:
        """A ConfigError for an unknown target, or one this index cannot search (no text vectors), raised
        before a query is encoded."""
        if target not in TARGETS:
            raise ConfigError(f"target {target!r} is not one of {TARGETS}")
        self.index.index_for(target)
