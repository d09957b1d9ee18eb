"""What the HTTP routes do, without HTTP: validate a query, encode it, search, attach metadata and links.

Concurrency: the query model runs on ONE dedicated thread (the Searcher's encoder is not thread-safe, and a
small model is fastest single-threaded anyway), so model calls are serialised, and text queries that arrive
while it is busy are encoded together in one batch (``TextBatcher``); faiss searches, id lookups,
image decoding and thumbnail reads run on the server's worker threads in parallel (faiss search is
thread-safe for reads). Uploaded images are decoded a few at a time to bound memory.

Storage: the index dir and the shards may be local or in an object store (``s3://``, ``gs://``). The index is
opened by ``mmembed.index.load_index`` (which takes its URL); shards are listed once at start, and each image
is read by range reads of its member (``thumbnails.py``), never by downloading a shard.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import faiss
import numpy as np
import torch
from starlette.concurrency import run_in_threadpool

from mmembed import storage
from mmembed.config import DEFAULT_TEXT_WEIGHT, SEARCH_MODES, ConfigError
from mmembed.decode import DecodeError, decode_image
from mmembed.index import IndexSet, load_index
from mmembed.index.reader import SAMPLE_COLUMNS
from mmembed.query import encoder_config_from_provenance, fuse
from mmembed.search import Searcher, SearchHit
from mmembed.serve.catalog import Catalog
from mmembed.serve.config import ServeConfig
from mmembed.serve.metrics import Metrics
from mmembed.serve.models import Hit, Item, RequestError, SearchResponse
from mmembed.serve.thumbnails import ThumbnailStore
from mmembed.shards import check_unique_names, list_shards, shard_name
from mmembed.tarread import SampleUnavailable

log = logging.getLogger(__name__)
MAX_KEY_CHARS = 4096
IMAGE_DECODE_SLOTS = 2
DECODE_STATUS = {"image_too_large": 413, "empty_image": 400}  # anything else: not an image -> 415


class TextBatcher:
    """Coalesces concurrent text queries into one model call: under load, the queries that arrived while the
    model was busy are encoded together (a batch of 8 costs about half of 8 single calls); alone, a query is
    encoded at once. Runs on the event loop, so it needs no lock; the model call runs on ``executor``."""

    def __init__(self, encode: Any, executor: ThreadPoolExecutor, metrics: Metrics, max_batch: int = 32) -> None:
        self.encode = encode
        self.executor = executor
        self.metrics = metrics
        self.max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future]] = []
        self._draining = False

    async def __call__(self, text: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((text, future))
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self.metrics.encode_batch.observe(len(batch))
                try:
                    vectors = await loop.run_in_executor(self.executor, self.encode, [text for text, _ in batch])
                except Exception as exc:  # handed to every waiting request, which reports it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), vector in zip(batch, vectors, strict=True):
                    if not future.done():  # a cancelled request (client gone) is skipped
                        future.set_result(vector[None])
        finally:
            self._draining = False


class SearchService:
    def __init__(self, config: ServeConfig, searcher: Searcher, shard_urls: dict[str, str], metrics: Metrics) -> None:
        self.config = config
        self.searcher = searcher
        self.metrics = metrics
        self.catalog = Catalog(searcher.index)
        self.thumbnails = ThumbnailStore(shard_urls, config.thumbnail_cache_items)
        self._model = ThreadPoolExecutor(1, "mmembed-model", initializer=_set_threads, initargs=(config.threads,))
        self._decode_slots = asyncio.Semaphore(IMAGE_DECODE_SLOTS)
        self._texts = TextBatcher(searcher.encoder.encode_texts, self._model, metrics)
        # An index built before the ids table held metadata, width and height: the catalog reads them per hit.
        self._hit_extras = not all(c in searcher.index.ids.schema.names for c in SAMPLE_COLUMNS)
        infos = searcher.index.infos
        for modality, index in searcher.index.indexes.items():
            metrics.index_vectors.labels(modality).set(index.count)
            metrics.index_bytes.labels(modality).set(_file_size(str(searcher.index.index_path(modality))))
        metrics.thumbnail_cache_items.set_function(lambda: len(self.thumbnails.cache))
        known = sum(1 for s in infos["sources"]["files"] if _stem(s["path"]) in shard_urls)
        log.info(
            "index %s: %d vectors (%s), model %s; %d of %d shards located for thumbnails",
            config.index_dir,
            infos["count"],
            infos["index_key"],
            infos["provenance"].get("model"),
            known,
            len(infos["sources"]["files"]),
        )

    @classmethod
    def open(cls, config: ServeConfig, metrics: Metrics) -> SearchService:
        """Open the index (memory-mapped; a remote one through load_index's local cache), load and warm the
        query model, locate the shards: every problem with them surfaces here, before the server listens."""
        _set_threads(config.threads)
        shard_urls = shard_map(config.shards)  # first: a listing is quicker than opening the index and model
        index = open_index(config.index_dir)
        override = None
        if config.checkpoint:  # the recorded model, its checkpoint file moved
            prov = index.infos["provenance"]
            override = replace(encoder_config_from_provenance(prov, config.device), checkpoint=config.checkpoint)
        searcher = Searcher(index, override, config.device)
        searcher.encoder.encode_texts(["warm up"])  # load now: a bad model fails at start, not on a query
        return cls(config, searcher, shard_urls, metrics)

    def close(self) -> None:
        self._model.shutdown(wait=False, cancel_futures=True)

    # --- search -----------------------------------------------------------------------------------------

    async def search_text(
        self, query: str, k: int, target: str, where: str | None = None, mode: str = "vector"
    ) -> SearchResponse:
        """A text query by ``mode`` (keyword mode calls no model) among the samples ``where`` holds for."""
        began = time.perf_counter()
        text = self._check_text(query)
        self._check(k, target, mode)
        where = _condition(where)
        vectors = None if mode == "keyword" else await self._encode_text(text)

        def search(n: int) -> list[list[SearchHit]]:
            return self.searcher.search_encoded([text], vectors, n, target, where, mode)

        return await self._respond("text", text, target, k, mode, where, search, began)

    async def search_image(
        self,
        data: bytes,
        name: str,
        k: int,
        target: str,
        where: str | None = None,
        text: str | None = None,
        text_weight: float = DEFAULT_TEXT_WEIGHT,
    ) -> SearchResponse:
        """An uploaded image, composed with ``text`` (``text_weight`` of the query) when given, among the samples
        ``where`` holds for."""
        began = time.perf_counter()
        self._check(k, target, "vector")
        where = _condition(where)
        if len(data) > self.config.max_upload_bytes:
            raise RequestError(413, f"image is {len(data):,} bytes, over the limit of {self.config.max_upload_bytes:,}")
        if text is not None:
            text = self._check_text(text)
            if not 0.0 <= text_weight <= 1.0:
                raise RequestError(422, f"text_weight must be within [0, 1], got {text_weight}")
        async with self._decode_slots:
            pixels = await run_in_threadpool(self._decode_upload, data, name)
        encoding = time.perf_counter()
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._model, self.searcher.encoder.encoder.embed_pixels, pixels[None])
        self.metrics.encode.labels("image").observe(time.perf_counter() - encoding)
        if text is not None:
            vectors = fuse(vectors, await self._encode_text(text), text_weight)

        def search(n: int) -> list[list[SearchHit]]:
            return self.searcher.search_vectors(vectors, n, target, where)

        return await self._respond("image", name, target, k, "vector", where, search, began)

    def _check_text(self, query: str) -> str:
        """The query stripped; a 422 for an empty one, a 413 for one over the length limit."""
        text = query.strip()
        if not text:
            raise RequestError(422, "query is empty; send a non-empty text, or upload an image")
        if len(query) > self.config.max_query_chars:
            raise RequestError(
                413, f"query is {len(query):,} characters, over the limit of {self.config.max_query_chars:,}"
            )
        return text

    async def _encode_text(self, text: str) -> np.ndarray:
        """One text's embedding (1 x dim), batched with concurrent requests' texts on the model thread."""
        encoding = time.perf_counter()
        vectors = await self._texts(text)
        self.metrics.encode.labels("text").observe(time.perf_counter() - encoding)
        return vectors

    def _decode_upload(self, data: bytes, name: str) -> np.ndarray:
        try:
            image = decode_image(data, self.config.max_image_pixels)
        except DecodeError as exc:
            raise RequestError(DECODE_STATUS.get(exc.code, 415), f"upload {name!r}: {exc}") from None
        return self.searcher.encoder.encoder.preprocessor.to_pixels(image)

    def _check(self, k: int, target: str, mode: str = "vector") -> None:
        """A 422 for a k, target or mode out of range, or one this index cannot serve."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.config.max_k:
            raise RequestError(422, f"k must be an integer within 1..{self.config.max_k}, got {k!r}")
        if target not in ("image", "text"):
            raise RequestError(422, f"target must be 'image' or 'text', got {target!r}")
        if mode not in SEARCH_MODES:
            raise RequestError(422, f"mode must be one of {', '.join(SEARCH_MODES)}, got {str(mode)[:50]!r}")
        unavailable = self.searcher.index.text_unavailable
        if target == "text" and unavailable and mode != "keyword":
            raise RequestError(422, f"target 'text' is not available: this index has no text index ({unavailable})")
        if mode != "vector":
            try:
                self.searcher.index.keywords  # noqa: B018 - raises the fix for an index without one
            except ConfigError as exc:
                raise RequestError(422, f"mode {mode!r} is not available: {exc}") from None

    async def _respond(
        self,
        kind: str,
        query: str,
        target: str,
        k: int,
        mode: str,
        where: str | None,
        search: Callable[[int], list[list[SearchHit]]],
        began: float,
    ) -> SearchResponse:
        """Run ``search`` (one query's Searcher call, given k) on a worker thread and wrap its hits."""
        searched = time.perf_counter()
        hits = await run_in_threadpool(self._search, search, k)
        self.metrics.search.labels(target).observe(time.perf_counter() - searched)
        self.metrics.queries.labels(kind, target).inc()
        took = round((time.perf_counter() - began) * 1000, 3)
        return SearchResponse(
            kind=kind, query=query, target=target, k=k, mode=mode, where=where, took_ms=took, results=hits
        )

    def _search(self, search: Callable[[int], list[list[SearchHit]]], k: int) -> list[Hit]:
        """``search``'s hits as HTTP hits; a ConfigError from it (a bad ``where``, bad keyword syntax: what
        ``_check`` left) is a 400 naming what is wrong."""
        if self.catalog.count == 0:
            return []
        try:
            found = search(min(k, self.catalog.count))[0]
        except ConfigError as exc:
            raise RequestError(400, str(exc)) from None
        return [self.hit(h) for h in found]

    def hit(self, hit: SearchHit) -> Hit:
        """The HTTP hit of a SearchHit: its fields plus links (and, for an index whose ids table predates
        them, metadata, width and height from the catalog)."""
        fields = vars(hit)  # SearchHit's fields (asdict() deep-copies: slow on the hot path)
        if self._hit_extras:
            extra = self.catalog.extras(hit.row_id, hit.key)
            fields = {**fields, "metadata": extra["metadata"], "width": extra["width"], "height": extra["height"]}
        return Hit(
            **fields,
            item=sample_path("items", hit.shard, hit.key),
            thumbnail=self._thumbnail_link(hit.shard, hit.key),
        )

    def _thumbnail_link(self, shard: str, key: str, size: str = "small") -> str | None:
        if not self.thumbnails.has_shard(shard):
            return None
        return sample_path("thumbnails", shard, key) + ("?size=large" if size == "large" else "")

    # --- items and thumbnails -----------------------------------------------------------------------------

    def _row(self, shard: str, key: str) -> dict[str, Any]:
        known = len(key) <= MAX_KEY_CHARS and len(shard) <= MAX_KEY_CHARS
        row_id = self.catalog.row_id(shard, key) if known else None
        if row_id is None:
            raise RequestError(404, f"no sample with key {key[:200]!r} in shard {shard[:200]!r} in this index")
        return self.catalog.rows([row_id])[0]

    def item(self, shard: str, key: str) -> Item:
        row = self._row(shard, key)
        return Item(
            **row,
            thumbnail=self._thumbnail_link(row["shard"], row["key"]),
            image=self._thumbnail_link(row["shard"], row["key"], "large"),
        )

    def thumbnail(self, shard: str, key: str, size: str) -> bytes:
        if size not in ("small", "large"):
            raise RequestError(422, f"size must be 'small' or 'large', got {size[:50]!r}")
        row = self._row(shard, key)
        pixels = self.config.thumbnail_size if size == "small" else self.config.detail_size
        try:
            data, cached = self.thumbnails.get(row["shard"], row["offset"], row["key"], pixels)
        except SampleUnavailable as exc:
            raise RequestError(exc.status, str(exc)) from None
        self.metrics.thumbnail_cache.labels("hit" if cached else "miss").inc()
        return data

    def health(self) -> dict[str, Any]:
        infos = self.searcher.index.infos
        return {
            "status": "ok",
            "count": infos["count"],
            "dim": infos["dim"],
            "model": infos["provenance"].get("model", "?"),
            "index_key": infos["index_key"],
            "text_rows": 0 if self.searcher.index.text_unavailable else infos.get("text_rows", infos["count"]),
            "shards_known": len(self.thumbnails.shard_urls),
        }


def sample_path(route: str, shard: str, key: str) -> str:
    """The URL path of a sample under ``route`` (items, thumbnails): a sample is (shard, key), keys may repeat
    across shards. Shard names hold no '/'; keys may, and the route takes the rest of the path as the key."""
    return f"/{route}/{quote(shard, safe='')}/{quote(key)}"


def _condition(where: str | None) -> str | None:
    """A request's ``where``: None when absent or blank (a search form's empty filter box)."""
    return where if where is not None and where.strip() else None


def open_index(url: str) -> IndexSet:
    """The index dir at ``url`` (a local path or an object-store URL), opened for search; a storage failure
    becomes a ConfigError naming the URL, so the command reports it instead of a traceback."""
    try:
        return load_index(url)
    except OSError as exc:
        raise ConfigError(f"serve --index {url}: cannot open the index ({exc})") from None


def _file_size(url: str) -> int:
    """The size in bytes of the file at ``url`` (0 when the storage does not say)."""
    found = storage.info(url)
    return found.size if found is not None else 0


def _stem(url: str) -> str:
    """A file's name without its extension (``s3://b/emb/embeddings/00001.parquet`` -> ``00001``)."""
    return posixpath.splitext(posixpath.basename(url))[0]


def shard_map(patterns: tuple[str, ...]) -> dict[str, str]:
    """Shard name -> URL for ``--shards`` patterns (globs and braces expanded, local or object-store URLs).

    Each pattern must find at least one shard that exists (a glob matching nothing, a missing bucket, or
    plain paths none of which exists is a ConfigError naming it); two shards with one name are refused.
    """
    urls: dict[str, None] = {}
    for pattern in patterns:
        try:
            found = list_shards([pattern])
            if not any(storage.info(url) is not None for url in found):  # stops at the first file found
                raise FileNotFoundError(f"no shard of {pattern!r} exists; check the path and quoting")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"serve --shards: {exc}") from None
        urls.update(dict.fromkeys(found))
    try:
        check_unique_names(list(urls))
    except ValueError as exc:
        raise ConfigError(f"serve --shards: {exc}") from None
    return {shard_name(url): url for url in urls}


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
