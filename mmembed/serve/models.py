"""Request and response bodies of the HTTP API (they are also its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Target = Literal["image", "text"]
TARGET_HELP = "'image': rank the images (text -> image, image -> image); 'text': rank the captions"


class TextQuery(BaseModel):
    """A text query, sent as JSON."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(description="the text to search for", examples=["a cat on a sofa"])
    k: int = Field(10, strict=True, description="number of results (1 .. the server's max_k)")
    target: Target = Field("image", description=TARGET_HELP)


class Hit(BaseModel):
    rank: int
    score: float = Field(description="cosine similarity between the query and this result")
    row_id: int
    key: str
    shard: str
    offset: int = Field(description="byte offset of the image member's data in its shard")
    caption: str | None
    url: str | None = Field(description="the sample's source URL, if its metadata had one")
    metadata: Any = Field(None, description="the sample's json member")
    width: int | None = None
    height: int | None = None
    item: str = Field(description="link to this sample's metadata")
    thumbnail: str | None = Field(description="link to its thumbnail; null when its shard is not known")


class SearchResponse(BaseModel):
    kind: Literal["text", "image"]
    query: str = Field(description="the text query, or the uploaded file's name")
    target: Target
    k: int
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
