"""The plain values that flow between stages: a raw sample, a decoded sample, a failure record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Stages named in error records, in pipeline order.
STAGE_SHARD = "shard"  # the shard as a whole could not be read (not a tar, missing, truncated)
STAGE_READ = "read"  # tar structure around one sample (duplicate key, no image member)
STAGE_DECODE = "decode"  # bytes -> image / caption / metadata
STAGE_PREPROCESS = "preprocess"  # image -> model input, caption -> tokens
STAGE_ENCODE = "encode"  # the model raised on the batch holding this sample


@dataclass
class RawSample:
    """All tar members that share one key, as bytes, plus where the image member sits."""

    shard: str
    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    member_offsets: dict[str, int] = field(default_factory=dict)


@dataclass
class SampleError:
    """One sample (or, with key None, a whole shard) that did not make it, and why."""

    shard: str
    key: str | None
    member: str | None
    stage: str
    code: str  # short machine-readable cause, e.g. "bad_image"; counted in the summary
    reason: str  # the full message: shard, member, cause and fix

    @property
    def is_shard_error(self) -> bool:
        return self.key is None


@dataclass
class DecodedSample:
    """A sample whose image, caption and metadata decoded cleanly."""

    shard: str
    key: str
    offset: int
    image_member: str
    image: Any  # PIL.Image.Image in RGB
    caption: str | None
    metadata: dict[str, Any] | None
    width: int
    height: int
    sha256: str
    phash: bytes  # 64-bit perceptual hash of the decoded image

    @property
    def url(self) -> str | None:
        value = (self.metadata or {}).get("url")
        return value if isinstance(value, str) else None


@dataclass
class ModelInput:
    """Compact, model-ready arrays for one sample (uint8 pixels, int tokens) plus its row fields."""

    row: dict[str, Any]  # key, shard, offset, caption, metadata, url, width, height, sha256, phash
    pixels: np.ndarray  # uint8, H x W x 3, already resized and cropped for the model
    tokens: np.ndarray  # int64, context_length


@dataclass
class EmbeddedSample:
    """A finished row: the sample's fields plus its normalised embeddings and their cosine."""

    row: dict[str, Any]
    image_embedding: np.ndarray
    text_embedding: np.ndarray
    similarity: float
