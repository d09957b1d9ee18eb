"""Request and response bodies of the HTTP API (they are also its OpenAPI schema), how a JSON body is read, and
the error a refused request raises."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Target = Literal["image", "text"]
TARGET_HELP = "'image': rank the images (text -> image, image -> image); 'text': rank the captions"
Mode = Literal["vector", "keyword", "hybrid"]
MODE_HELP = (
    "text queries: 'vector' (embedding), 'keyword' (BM25 over captions: words, \"a phrase\", prefix*; no model "
    "call) or 'hybrid' (both, reciprocal rank fusion)"
)
WHERE_HELP = (
    "only samples matching this SQL condition over key, shard, offset, caption, url, has_text, width, height, "
    "similarity and metadata (JSON: metadata->>'field'); a bad one is refused with 400"
)
WHERE_EXAMPLE = "width >= 512 AND metadata->>'src' = 'flickr'"
Body = TypeVar("Body", bound=BaseModel)


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx) and a message saying what to fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_body(model: type[Body], body: bytes, example: str | None = None) -> Body:
    """A JSON request body as ``model``: malformed JSON is a 400, a missing or out-of-range field a 422 naming
    it; both end with ``send {example}`` when one is given."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        hint = f"; send {example}" if example else ""
        if any(e["type"] == "json_invalid" for e in errors):
            raise RequestError(400, f"malformed JSON body ({errors[0]['msg']}){hint}") from None
        raise RequestError(422, f"{describe_errors(errors)}{hint}") from None


def describe_errors(errors: list[Any]) -> str:
    """Validation errors as one line: ``field.path: what is wrong; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors)


class SampleRef(BaseModel):
    """One indexed sample: its shard's name and its key (keys may repeat across shards)."""

    model_config = ConfigDict(extra="forbid")

    shard: str = Field(examples=["00001"])
    key: str = Field(examples=["000012"])


class TextQuery(BaseModel):
    """A text query, or "more like this" (``like``: an indexed sample, searched with its own image), as JSON."""

    model_config = ConfigDict(extra="forbid")

    query: str | None = Field(None, description="the text to search for", examples=["a cat on a sofa"])
    like: SampleRef | None = Field(None, description="instead of a text: search with this indexed sample's image")
    k: int = Field(10, strict=True, description="number of results (1 .. the server's max_k)")
    target: Target = Field("image", description=TARGET_HELP)
    where: str | None = Field(None, description=WHERE_HELP, examples=[WHERE_EXAMPLE])
    mode: Mode = Field("vector", description=MODE_HELP)

    @model_validator(mode="after")
    def _one_query(self) -> TextQuery:
        if (self.query is None) == (self.like is None):
            raise ValueError('give either "query" (a text) or "like" (a sample: {"shard": ..., "key": ...})')
        return self


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its nested models written in place: an OpenAPI request body cannot
    refer to the ``$defs`` that pydantic puts beside it."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {name: inline(value) for name, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


class Hit(BaseModel):
    rank: int
    score: float = Field(
        description="mode 'vector': cosine similarity to the query; 'keyword': BM25 score; 'hybrid': fused score"
    )
    row_id: int
    key: str
    shard: str
    offset: int = Field(description="byte offset of the image member's data in its shard")
    caption: str | None
    url: str | None = Field(description="the sample's source URL, if its metadata had one")
    metadata: Any = Field(None, description="the sample's json member")
    width: int | None = None
    height: int | None = None
    similarity: float | None = Field(None, description="cosine(image, caption); null for an image-only sample")
    item: str = Field(description="link to this sample's metadata")
    thumbnail: str | None = Field(description="link to its thumbnail; null when its shard is not known")


class SearchResponse(BaseModel):
    kind: Literal["text", "image"]
    query: str = Field(description="the text query, or the uploaded file's name")
    target: Target
    k: int
    mode: Mode = "vector"
    where: str | None = None
    took_ms: float
    results: list[Hit]


class Item(BaseModel):
    row_id: int
    key: str
    shard: str
    offset: int
    caption: str | None
    url: str | None
    metadata: Any = None
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    thumbnail: str | None
    image: str | None = Field(description="link to a larger rendition for a detail view")


class Health(BaseModel):
    status: Literal["ok"]
    count: int
    dim: int
    model: str
    index_key: str
    text_rows: int = Field(description="samples target 'text' can return (they have a caption); 0: not available")
    shards_known: int


class ErrorBody(BaseModel):
    detail: Any = Field(description="what was wrong with the request and how to fix it")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request (bad JSON or multipart)",
        404: "unknown key, or no thumbnail for it",
        413: "request body, query or image too large",
        415: "the upload is not a decodable image",
        422: "a field is missing or out of range",
    }.items()
}
THUMBNAIL_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    502: {"model": ErrorBody, "description": "the storage holding the sample's shard failed; try again"},
}
