"""Ways into the collection besides a typed query: a seeded random sample of it (``GET /browse``, what the page
shows before the first query) and "more like this" (``POST /search`` with ``like``: a search with an indexed
sample's own image, read from its shard by range reads like a thumbnail and run through the upload path)."""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from mmembed.config import ConfigError
from mmembed.search import SearchHit
from mmembed.serve.models import WHERE_HELP, Hit, RequestError, SampleRef, SearchResponse
from mmembed.serve.service import SearchService
from mmembed.tarread import SampleUnavailable

MAX_SEED = 2**63 - 1


class BrowseHit(Hit):
    """A search hit without a query, hence without a score."""

    score: None = Field(None, description="always null: a browse sample answers no query")


class BrowseResponse(BaseModel):
    seed: int = Field(description="the seed that drew this sample: the same seed draws the same samples")
    count: int = Field(description="samples it was drawn from: the index's, or those matching ``where``")
    where: str | None = Field(None, description=WHERE_HELP)
    took_ms: float
    results: list[BrowseHit]


def browse(service: SearchService, n: int, seed: int, where: str | None = None) -> BrowseResponse:
    """``n`` samples drawn at random by ``seed`` without repeats (among those ``where`` holds for), as hits
    ranked 1..n: the same arguments draw the same samples from the same index."""
    began = time.perf_counter()
    if isinstance(n, bool) or not 1 <= n <= service.config.max_k:
        raise RequestError(422, f"n must be an integer within 1..{service.config.max_k}, got {n!r}")
    if not 0 <= seed <= MAX_SEED:
        raise RequestError(422, f"seed must be an integer within 0..{MAX_SEED}, got {seed!r}")
    try:
        rows = service.searcher.rows_where(where or None)
    except ConfigError as exc:
        raise RequestError(400, str(exc)) from None
    pool = np.arange(service.catalog.count) if rows is None else np.flatnonzero(rows)
    rng = np.random.default_rng(seed)
    drawn = pool[rng.choice(len(pool), size=min(n, len(pool)), replace=False)] if len(pool) else pool
    found = service.searcher.index.lookup(drawn.astype(np.int64)).to_pylist()
    results = []
    for rank, row in enumerate(found, 1):
        hit = service.hit(SearchHit.from_row(rank, 0.0, row))  # the search path's hit: links, metadata
        results.append(BrowseHit(**{**hit.model_dump(), "score": None}))
    took = round((time.perf_counter() - began) * 1000, 3)
    return BrowseResponse(seed=seed, count=len(pool), where=where or None, took_ms=took, results=results)


async def search_like(
    service: SearchService, like: SampleRef, k: int, target: str, where: str | None = None, mode: str = "vector"
) -> SearchResponse:
    """Search with the image of indexed sample ``like`` (among the samples ``where`` holds for): its stored
    bytes, range-read from its shard, go through the upload path's decode, encode and search, so the sample
    finds itself first."""
    if mode != "vector":
        raise RequestError(
            422, f"mode {mode[:50]!r} ranks text queries; a search like a sample is by its image's embedding"
        )
    item = service.item(like.shard, like.key)  # a 404 naming the sample when the index has no such sample
    try:
        data = await run_in_threadpool(service.thumbnails.image, item.shard, item.offset, item.key)
    except SampleUnavailable as exc:
        raise RequestError(exc.status, f"cannot search like this sample: {exc}") from None
    limit = service.config.max_upload_bytes
    if len(data) > limit:
        raise RequestError(
            413,
            f"sample {item.key} in shard {item.shard}: its image is {len(data):,} bytes, over the upload limit of "
            f"{limit:,}; restart the server with a larger --max-upload-bytes to search with it",
        )
    return await service.search_image(data, f"{item.shard}/{item.key}", k, target, where)
