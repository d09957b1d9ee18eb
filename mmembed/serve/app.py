"""The FastAPI app: routes, error mapping and the static search page. The work is in ``service.py``.

POST /search            a text query (JSON), "more like this" (JSON ``like``: an indexed sample) or an uploaded
                        image (multipart field ``image``) -> ranked hits
GET  /browse?n=24&seed=0&where=  a seeded random sample of the index, as hits (what the page shows first)
GET  /items/{shard}/{key}       one sample's metadata (a sample is its shard and key: keys may repeat across shards)
GET  /thumbnails/{shard}/{key}  its image, range-read from the shard (local or object store) at its offset, resized
                                (``?size=large`` for the detail view)
GET  /healthz, /metrics (Prometheus text), /openapi.json (+ /docs), / (the page), /static/*
GET  /indices-list, POST /knn-service, POST /metadata   clip-retrieval's back-end protocol (``clipcompat.py``)
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmembed import __version__
from mmembed.config import DEFAULT_TEXT_WEIGHT, SEARCH_MODES
from mmembed.serve.browse import BrowseResponse, browse, search_like
from mmembed.serve.clipcompat import clip_router
from mmembed.serve.config import ServeConfig
from mmembed.serve.limits import BodyLimitMiddleware
from mmembed.serve.metrics import Metrics, MetricsMiddleware
from mmembed.serve.models import (
    ERROR_RESPONSES,
    THUMBNAIL_RESPONSES,
    WHERE_HELP,
    Health,
    Item,
    RequestError,
    SearchResponse,
    TextQuery,
    describe_errors,
    inline_schema,
    parse_body,
)
from mmembed.serve.service import SearchService

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
FORM_FIELDS = {"image", "query", "k", "target", "where", "mode", "text", "text_weight"}
EXAMPLE = '{"query": "a cat", "k": 10, "target": "image"}, or an image as multipart field "image"'
SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(TextQuery)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "JPEG/PNG/WebP/... file"},
                        "k": {"type": "integer", "default": 10},
                        "target": {"type": "string", "enum": ["image", "text"], "default": "image"},
                        "where": {"type": "string", "description": WHERE_HELP},
                        "mode": {"type": "string", "enum": list(SEARCH_MODES), "default": "vector"},
                        "text": {"type": "string", "description": "with image: the text of a composed query"},
                        "text_weight": {"type": "number", "default": DEFAULT_TEXT_WEIGHT},
                    },
                }
            },
        },
    }
}


def create_app(config: ServeConfig) -> FastAPI:
    """Open the index and model (errors surface here, before listening) and build the app."""
    metrics = Metrics()
    service = SearchService.open(config, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="mmembed search",
        version=__version__,
        description="Text and image search over an mmembed index (OpenCLIP embeddings + FAISS).",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    if config.cors_origins:  # browsers let pages of these origins read the answers (clip-front hosted elsewhere)
        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: it sees the limit's 413s too
    _add_error_handlers(app)

    @app.post("/search", response_model=SearchResponse, responses=ERROR_RESPONSES, openapi_extra=SEARCH_BODY)
    async def search(request: Request) -> SearchResponse:
        """Search with a JSON text query ``{"query", "k", "target"}``, ``{"like": {"shard", "key"}, ...}`` (an
        indexed sample's own image) or a multipart image upload."""
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            return await _search_form(service, request)
        query = parse_body(TextQuery, await request.body(), EXAMPLE)
        if query.like is not None:
            return await search_like(service, query.like, query.k, query.target, query.where, query.mode)
        return await service.search_text(query.query, query.k, query.target, query.where, query.mode)

    @app.get("/browse", response_model=BrowseResponse, responses=ERROR_RESPONSES)
    def browse_sample(n: int = 24, seed: int = 0, where: str | None = None) -> BrowseResponse:
        """``n`` samples drawn at random by ``seed`` (the same seed, the same samples), among those ``where``
        holds for, shaped like search hits."""
        return browse(service, n, seed, where)

    @app.get("/items/{shard}/{key:path}", response_model=Item, responses=ERROR_RESPONSES)
    def item(shard: str, key: str) -> Item:
        """Metadata of one indexed sample."""
        return service.item(shard, key)

    @app.get(
        "/thumbnails/{shard}/{key:path}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}, "description": "a JPEG"}, **THUMBNAIL_RESPONSES},
    )
    def thumbnail(shard: str, key: str, size: str = "small") -> Response:
        """The sample's image from its shard (range reads), resized: ``size=small`` (grid) or ``large`` (detail)."""
        data = service.thumbnail(shard, key, size)
        headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/healthz", response_model=Health)
    def healthz() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    def prometheus() -> Response:
        """Prometheus text format: requests, latency histograms, index size, thumbnail cache."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.include_router(clip_router(service))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _search_form(service: SearchService, request: Request) -> SearchResponse:
    async with request.form(max_files=1, max_fields=len(FORM_FIELDS), max_part_size=64 * 1024) as form:
        unknown = set(form.keys()) - FORM_FIELDS
        if unknown:
            raise RequestError(422, f"unknown form fields {sorted(unknown)}; expected some of {sorted(FORM_FIELDS)}")
        upload, text = form.get("image"), form.get("query")
        k, target = _form_int(form.get("k", "10")), str(form.get("target", "image"))
        where, mode, modifier = form.get("where"), str(form.get("mode", "vector")), form.get("text")
        where = str(where) if where is not None else None
        if upload is not None and text is not None:
            raise RequestError(422, 'give a text query or an image, not both (an image\'s text modifier: "text")')
        if isinstance(upload, UploadFile):
            if mode != "vector":
                raise RequestError(422, f"mode {mode[:50]!r} ranks text queries; an image is searched by its embedding")
            weight = _form_float(form.get("text_weight", str(DEFAULT_TEXT_WEIGHT)))
            modifier = str(modifier) if modifier is not None else None
            name = upload.filename or "upload"
            return await service.search_image(await upload.read(), name, k, target, where, modifier, weight)
        if upload is not None:
            raise RequestError(422, 'form field "image" must be a file upload')
        if isinstance(text, str):
            return await service.search_text(text, k, target, where, mode)
    raise RequestError(422, 'no query: send an image file in form field "image" (or a text in "query")')


def _form_float(value: Any) -> float:
    try:
        return float(str(value))
    except ValueError:
        raise RequestError(422, f"text_weight must be a number within [0, 1], got {str(value)[:50]!r}") from None


def _form_int(value: Any) -> int | str:
    try:
        return int(str(value))
    except ValueError:
        return str(value)[:50]  # refused with a clear message by the k check


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_errors(list(exc.errors()))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, 500)
