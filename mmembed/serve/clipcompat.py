"""clip-retrieval's back-end protocol (``clip_back``) on ``mmembed serve``: ``clip_retrieval.clip_client.ClipClient``
pointed at ``http://HOST:PORT/knn-service`` works unchanged.

GET  /indices-list  ``["<name>"]``: the one index served, named by the last path component of ``--index``
                    (``serve --index data/index`` -> ``"index"``).
POST /knn-service   one of ``text``, ``image`` (base64 bytes), ``image_url``, ``embedding_input``; ``modality``,
                    ``num_images``, ``num_result_ids``, ``indice_name``, ``deduplicate`` and the options below
                    -> ``[{id, similarity, caption, url, shard, key, source_url}, ...]``, best first.
POST /metadata      ``{"ids": [...], "indice_name": ...}`` -> ``[{id, metadata: {caption, url, source_url, shard,
                    key, metadata, width, height, sha256}}, ...]`` in the order asked.

The body is read as JSON whatever its content type (the client sends none, clip-front text/plain).

Mapping:
- ``id`` is our row id (an integer, as clip-retrieval's); ``/metadata`` resolves it to the sample.
- ``modality`` is the index searched ("image" or "text"), our ``target``.
- ``num_result_ids`` (default ``num_images``) candidates are searched and deduplicated; the first ``num_images``
  survivors carry caption and links, the rest only ``id`` and ``similarity`` (clip_back's shape; their details
  come from ``/metadata``). Both counts are capped at ``--max-k``; header ``X-Results-Capped`` then says so.
- ``url``: an absolute link to the sample's ``/thumbnails/{shard}/{key}?size=large`` on this server (null when
  its shard is unknown: pass ``--shards``); ``source_url``: the URL the sample's metadata recorded, if any.
- ``image_url``: this server fetches no URL. It is accepted only when it names this server's own
  ``/thumbnails/{shard}/{key}`` route (same host and port): that image is read from its shard, at the size the URL
  asks for, and searched as an upload, which is what fetching the URL would have given. Any other URL is a 422
  saying to send the image itself in ``image``.
- ``embedding_input``: a list of the index's ``dim`` finite floats, L2-normalised here (a zero vector is refused).
- ``deduplicate`` (clip_back's rule): candidates whose vectors in the searched index have cosine similarity above
  ``DUPLICATE_SIMILARITY`` are linked; of each connected group only the best-ranked is kept. The vectors are the
  index's own (exact for Flat, HNSW and RFlat indexes, SQ8-decoded for Refine(SQ8)); an IVF-PQ index without
  re-ranking cannot give its vectors back, and there only exact duplicates are dropped: the same image sha256
  (modality image) or the same caption (modality text). Header ``X-Deduplicated-By`` names the rule that ran.
- Accepted and ignored, never applied: ``use_safety_model``, ``use_violence_detector``, ``aesthetic_score``,
  ``aesthetic_weight``, ``use_mclip`` (text is always encoded by the index's own model), and unknown fields.
  Header ``X-Ignored-Options`` lists those a request asked for.
- Stricter than clip_back: exactly one query input (clip_back silently picks one), an unknown ``indice_name`` is
  a 404 naming the served one (missing or null means it), out-of-range ids are a 404.
- CORS: none by default, so a page on another origin cannot read the answers; ``--cors-origin ORIGIN`` lets a
  clip-front hosted there call this server (``app.py``).
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import faiss
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from mmembed.config import ConfigError
from mmembed.dedup.links import forest
from mmembed.serve.models import ERROR_RESPONSES, RequestError, Target, parse_body
from mmembed.serve.service import SearchService, sample_path

DUPLICATE_SIMILARITY = 0.94  # clip_back's threshold: cosine similarity above it links two results
MAX_METADATA_IDS = 1000
IGNORED_OPTIONS = ("use_mclip", "use_safety_model", "use_violence_detector", "aesthetic_score", "aesthetic_weight")
INPUTS = ("text", "image", "image_url", "embedding_input")


class KnnRequest(BaseModel):
    """clip_back's ``/knn-service`` body, as ``ClipClient`` and clip-front send it."""

    model_config = ConfigDict(extra="allow")

    text: str | None = Field(None, description="a text query ('' counts as none, as in clip_back)")
    image: str | None = Field(None, description="an image file's bytes, base64-encoded")
    image_url: str | None = Field(None, description="only this server's own /thumbnails/{shard}/{key} links")
    embedding_input: list[float] | None = Field(None, description="a query vector of the index's dim")
    modality: Target = Field("image", description="the index searched: 'image' or 'text' (our target)")
    num_images: int = Field(ge=1, description="results returned with caption and links (capped at --max-k)")
    num_result_ids: int | None = Field(None, ge=1, description="candidates searched (default num_images)")
    indice_name: str | None = Field(None, description="the name GET /indices-list gives (null: that one)")
    deduplicate: bool | None = Field(False, description="drop near-identical results (see X-Deduplicated-By)")
    use_mclip: bool | None = Field(None, description="ignored: text is encoded by the index's own model")
    use_safety_model: bool | None = Field(None, description="ignored: no safety model here")
    use_violence_detector: bool | None = Field(None, description="ignored: no violence detector here")
    aesthetic_score: float | str | None = Field(None, description="ignored: no aesthetic embeddings here")
    aesthetic_weight: float | str | None = Field(None, description="ignored: no aesthetic embeddings here")


class MetadataRequest(BaseModel):
    """clip_back's ``/metadata`` body: row ids from ``/knn-service`` results."""

    model_config = ConfigDict(extra="ignore")

    ids: list[int] = Field(description=f"row ids (at most {MAX_METADATA_IDS})")
    indice_name: str | None = None


class KnnResult(BaseModel):
    """One ``/knn-service`` result; past ``num_images`` only ``id`` and ``similarity`` are present."""

    id: int = Field(description="the sample's row id (resolve it with POST /metadata)")
    similarity: float = Field(description="cosine similarity between the query and this result")
    caption: str | None = None
    url: str | None = Field(None, description="absolute link to the sample's large thumbnail on this server")
    shard: str | None = None
    key: str | None = None
    source_url: str | None = Field(None, description="the URL the sample's metadata recorded, if any")


class MetadataEntry(BaseModel):
    id: int
    metadata: dict[str, Any]


Dedup = Literal["embedding", "sha256", "caption", "off"]


def clip_router(service: SearchService) -> APIRouter:
    """The clip-retrieval routes over ``service``'s index."""
    router = APIRouter(tags=["clip-retrieval compatibility"])
    name = index_name(service.config.index_dir)

    @router.get("/indices-list", response_model=list[str])
    def indices_list() -> list[str]:
        """The names ``indice_name`` may take: the one index served."""
        return [name]

    @router.post(
        "/knn-service",
        response_model=list[KnnResult],
        responses=ERROR_RESPONSES,
        openapi_extra=_body(KnnRequest),
    )
    async def knn_service(request: Request) -> JSONResponse:
        """clip_back's nearest-neighbour search (see this module's docstring for what maps to what)."""
        query = parse_body(KnnRequest, await request.body())
        _check_index(query.indice_name, name)
        max_k = service.config.max_k
        shown = min(query.num_images, max_k)
        candidates = min(query.num_result_ids or query.num_images, max_k)
        hits = await _search(service, request, query, candidates)
        dedup: Dedup = "off"
        if query.deduplicate and hits:
            hits, dedup = await run_in_threadpool(_deduplicate, service, hits, query.modality)
        base = str(request.base_url).rstrip("/")
        results = [_result(service, hit, base, full=i < shown) for i, hit in enumerate(hits)]
        headers = {"X-Deduplicated-By": dedup}
        ignored = _ignored(query)
        if ignored:
            headers["X-Ignored-Options"] = ",".join(ignored)
        if max(query.num_images, query.num_result_ids or 0) > max_k:
            headers["X-Results-Capped"] = str(max_k)
        return JSONResponse(results, headers=headers)

    @router.post(
        "/metadata", response_model=list[MetadataEntry], responses=ERROR_RESPONSES, openapi_extra=_body(MetadataRequest)
    )
    async def metadata(request: Request) -> JSONResponse:
        """The samples behind ``/knn-service`` ids, in the order asked."""
        asked = parse_body(MetadataRequest, await request.body())
        _check_index(asked.indice_name, name)
        if len(asked.ids) > MAX_METADATA_IDS:
            raise RequestError(413, f"{len(asked.ids):,} ids asked; send at most {MAX_METADATA_IDS} per request")
        count = service.catalog.count
        unknown = [i for i in asked.ids if not 0 <= i < count]
        if unknown:
            raise RequestError(404, f"no sample with id {unknown[:10]} in index {name!r} (ids are 0..{count - 1})")
        rows = await run_in_threadpool(service.catalog.rows, asked.ids)
        base = str(request.base_url).rstrip("/")
        return JSONResponse([{"id": row["row_id"], "metadata": _metadata(service, row, base)} for row in rows])

    return router


def index_name(index_dir: str) -> str:
    """The name ``/indices-list`` gives the index: the last path component of its URL (``data/index`` -> ``index``)."""
    return posixpath.basename(index_dir.replace("\\", "/").rstrip("/")) or "index"


def _check_index(asked: str | None, name: str) -> None:
    if asked is not None and asked != name:
        raise RequestError(404, f"no index named {asked[:200]!r} here; available: [{name!r}] (GET /indices-list)")


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body read by hand (any content type, as clip_back reads it)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _ignored(query: KnnRequest) -> list[str]:
    """The options a request asked for that this server does not apply (unset, false, null or '' ask nothing)."""
    asked = [name for name in IGNORED_OPTIONS if getattr(query, name) not in (None, False, "")]
    return asked + sorted(query.model_extra or {})


# --- search -----------------------------------------------------------------------------------------------


async def _search(service: SearchService, request: Request, query: KnnRequest, k: int) -> list[Any]:
    """The ranked hits (objects with row_id, score, shard, key, caption, url) for the one query input given."""
    given = [field for field in INPUTS if getattr(query, field) not in (None, "")]
    if len(given) != 1:
        raise RequestError(
            422, f"give exactly one of {', '.join(INPUTS)} (null or '' for the others); got {given or 'none'}"
        )
    target = query.modality
    if query.text:
        return (await service.search_text(query.text, k, target)).results
    if query.image:
        data = _b64decode(query.image)
        return (await service.search_image(data, "image (base64)", k, target)).results
    if query.image_url:
        shard, key, size = _own_thumbnail(query.image_url, request)
        data = await run_in_threadpool(service.thumbnail, shard, key, size)
        return (await service.search_image(data, query.image_url[:200], k, target)).results
    vector = _query_vector(query.embedding_input or [], int(service.searcher.index.infos["dim"]))
    return await run_in_threadpool(_search_vector, service, vector, k, target)


def _b64decode(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL: the bytes follow the comma
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(422, "image: not base64; send the image file's bytes base64-encoded") from None


def _own_thumbnail(url: str, request: Request) -> tuple[str, str, str]:
    """(shard, key, size) of a link to this server's ``/thumbnails/{shard}/{key}``; anything else is refused."""
    parts = urlsplit(url)
    prefix = request.scope.get("root_path", "").rstrip("/") + "/thumbnails/"
    own = parts.scheme in ("http", "https") and parts.netloc == request.url.netloc
    shard, _, key = parts.path.removeprefix(prefix).partition("/")
    if not own or not parts.path.startswith(prefix) or not shard or not key:
        raise RequestError(
            422,
            f"image_url {url[:200]!r}: this server fetches no URL; it accepts only its own links "
            f"{request.url.scheme}://{request.url.netloc}{prefix}{{shard}}/{{key}} (a result's url). "
            "Send the image itself, base64-encoded, in 'image' (ClipClient.query(image=<a local file>))",
        )
    size = parse_qs(parts.query).get("size", ["small"])[0]
    return unquote(shard), unquote(key), size


def _query_vector(values: Sequence[float], dim: int) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32).reshape(1, -1)
    if vector.shape[1] != dim:
        raise RequestError(422, f"embedding_input has {vector.shape[1]} values; this index's vectors have {dim}")
    if not np.isfinite(vector).all() or not np.any(vector):
        raise RequestError(422, "embedding_input must be finite numbers, not all zero")
    faiss.normalize_L2(vector)
    return vector


def _search_vector(service: SearchService, vector: np.ndarray, k: int, target: str) -> list[Any]:
    if service.catalog.count == 0:
        return []
    try:
        return service.searcher.search_vectors(vector, min(k, service.catalog.count), target)[0]
    except ConfigError as exc:  # no text index
        raise RequestError(422, str(exc)) from None


# --- deduplication ----------------------------------------------------------------------------------------


def _deduplicate(service: SearchService, hits: list[Any], modality: str) -> tuple[list[Any], Dedup]:
    """``hits`` without the near-duplicates of better-ranked ones, and the rule that found them."""
    row_ids = np.array([hit.row_id for hit in hits], dtype=np.int64)
    vectors = stored_vectors(service.searcher.index.index_for(modality).index, row_ids)
    if vectors is not None:
        dropped, rule = near_duplicates(vectors), "embedding"
    elif modality == "image":
        sha = [service.catalog.extras(hit.row_id, hit.key)["sha256"] for hit in hits]
        dropped, rule = repeated(sha), "sha256"
    else:
        dropped, rule = repeated([hit.caption for hit in hits]), "caption"
    drop = set(dropped.tolist())
    return [hit for i, hit in enumerate(hits) if i not in drop], rule


def stored_vectors(index: faiss.Index, row_ids: np.ndarray) -> np.ndarray | None:
    """The vectors ``index`` holds for ``row_ids``, L2-normalised; None when it cannot give them back (IVF-PQ
    without re-ranking keeps codes and no id -> list map)."""
    try:
        vectors = index.reconstruct_batch(np.ascontiguousarray(row_ids, dtype=np.int64))
    except RuntimeError:
        return None
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(vectors)
    return vectors


def near_duplicates(vectors: np.ndarray, threshold: float = DUPLICATE_SIMILARITY) -> np.ndarray:
    """Positions (ascending) of ranked vectors linked, directly or through others, to a better-ranked one by a
    cosine similarity above ``threshold``: all of each connected group but its first."""
    left, right = np.nonzero(np.triu(vectors @ vectors.T > threshold, k=1))
    return np.sort(forest(left, right)[1])


def repeated(keys: Sequence[str | None]) -> np.ndarray:
    """Positions whose key an earlier position has (None matches nothing)."""
    seen: set[str] = set()
    out = []
    for i, key in enumerate(keys):
        if key is not None and key in seen:
            out.append(i)
        elif key is not None:
            seen.add(key)
    return np.array(out, dtype=np.int64)


# --- responses --------------------------------------------------------------------------------------------


def _large_thumbnail(service: SearchService, shard: str, key: str, base: str) -> str | None:
    if not service.thumbnails.has_shard(shard):
        return None
    return f"{base}{sample_path('thumbnails', shard, key)}?size=large"


def _result(service: SearchService, hit: Any, base: str, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"id": int(hit.row_id), "similarity": float(hit.score)}
    if full:
        out.update(
            caption=hit.caption,
            url=_large_thumbnail(service, hit.shard, hit.key, base),
            shard=hit.shard,
            key=hit.key,
            source_url=hit.url,
        )
    return out


def _metadata(service: SearchService, row: dict[str, Any], base: str) -> dict[str, Any]:
    return {
        "caption": row["caption"],
        "url": _large_thumbnail(service, row["shard"], row["key"], base),
        "source_url": row["url"],
        "shard": row["shard"],
        "key": row["key"],
        "metadata": row["metadata"],
        "width": row["width"],
        "height": row["height"],
        "sha256": row["sha256"],
    }
