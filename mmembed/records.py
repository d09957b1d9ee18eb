"""The plain values that flow between stages: a shard to read, a raw sample, a decoded sample, a failure record,
and the end-of-shard marker that tells the writer a shard is whole."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Stages named in error records, in pipeline order.
STAGE_SHARD = "shard"  # the shard as a whole could not be read (not a tar, missing, truncated)
STAGE_READ = "read"  # tar structure around one sample (duplicate key, no image member)
STAGE_DECODE = "decode"  # bytes -> image / caption / metadata
STAGE_PREPROCESS = "preprocess"  # image -> model input, caption -> tokens
STAGE_ENCODE = "encode"  # the model raised on the batch holding this sample


@dataclass(frozen=True)
class ShardSource:
    """One input shard as the launcher listed it: where it is and what it was (size, modification time).

    Recorded in the shard's outputs, so a resumed run reuses them only for the same file.
    """

    url: str
    size: int | None = None  # None when the listing could not stat it (missing: the reader records why)
    mtime: float | None = None

    def fingerprint(self) -> dict[str, Any]:
        return {"url": self.url, "size": self.size, "mtime": self.mtime}


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
    image: Any  # PIL.Image.Image in RGB, or an EncodedImage left for the model's device (--decode gpu)
    caption: str | None
    metadata: dict[str, Any] | None
    width: int
    height: int
    sha256: str | None  # None when DecodeConfig.fingerprints is off (training)
    phash: bytes | None  # 64-bit perceptual hash of the decoded image; None as sha256

    @property
    def url(self) -> str | None:
        value = (self.metadata or {}).get("url")
        return value if isinstance(value, str) else None


@dataclass
class EncodedImage:
    """A JPEG the reader left encoded for the model's device to decode (``--decode gpu``).

    Only its header was read (size, EXIF orientation). The whole raw sample rides along, so the CPU path can
    take the sample over when the device decoder refuses the JPEG; it costs no copy (the same bytes objects).
    """

    raw: RawSample
    image_ext: str  # the member of ``raw`` that holds the JPEG
    orientation: int  # EXIF orientation (1 upright ... 8), applied after decoding as Pillow's exif_transpose does

    @property
    def data(self) -> bytes:
        return self.raw.members[self.image_ext]


@dataclass
class ModelInput:
    """Compact, model-ready arrays for one sample (uint8 pixels, int tokens) plus its row fields; or, with
    ``--decode gpu``, the JPEG's bytes for the model's device to decode, resize and hash in its batch."""

    row: dict[str, Any]  # key, shard, offset, caption, metadata, url, width, height, sha256, phash
    pixels: np.ndarray | None  # uint8, H x W x 3, resized and cropped for the model; None when ``encoded`` is set
    tokens: np.ndarray | None  # int64, context_length; None: image only (no caption, or captions not embedded)
    encoded: EncodedImage | None = None  # the JPEG to decode on the model's device (row phash filled there)

    @property
    def nbytes(self) -> int:
        """Bytes this input holds for the model: pixels or the encoded JPEG, plus tokens."""
        image = self.pixels.nbytes if self.pixels is not None else len(self.encoded.data) if self.encoded else 0
        return image + (0 if self.tokens is None else self.tokens.nbytes)


@dataclass
class EmbeddedChunk:
    """Finished rows of one shard: their fields plus row-aligned embeddings and cosines.

    A row without a text vector (image-only sample) has ``has_text`` False, zeros in ``text_embeddings``
    and 0 in ``similarity``; the writer stores both as null.
    """

    shard: str
    rows: list[dict[str, Any]]
    image_embeddings: np.ndarray  # float32, N x dim, L2-normalised
    text_embeddings: np.ndarray  # float32, N x dim, L2-normalised where has_text
    similarity: np.ndarray  # float32, N
    has_text: np.ndarray  # bool, N

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def per_shard(
        cls,
        rows: Sequence[dict[str, Any]],
        image: np.ndarray,
        text: np.ndarray,
        similarity: np.ndarray,
        has_text: np.ndarray,
    ) -> list[EmbeddedChunk]:
        """One batch's row-aligned results -> one chunk per shard in it (shards in order of first row)."""
        by_shard: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_shard.setdefault(row["shard"], []).append(i)
        return [
            cls(shard, [rows[i] for i in index], image[index], text[index], similarity[index], has_text[index])
            for shard, index in by_shard.items()
        ]

    @classmethod
    def join(cls, shard: str, chunks: Sequence[EmbeddedChunk]) -> EmbeddedChunk:
        """All chunks of a shard (in any order) as one, rows sorted by their offset in the tar."""
        if not chunks:
            empty = np.zeros((0, 0), np.float32)
            return cls(shard, [], empty, empty, np.zeros(0, np.float32), np.zeros(0, bool))
        rows = [row for chunk in chunks for row in chunk.rows]
        order = np.argsort([row["offset"] for row in rows], kind="stable")
        return cls(
            shard,
            [rows[i] for i in order],
            np.concatenate([chunk.image_embeddings for chunk in chunks])[order],
            np.concatenate([chunk.text_embeddings for chunk in chunks])[order],
            np.concatenate([chunk.similarity for chunk in chunks])[order],
            np.concatenate([chunk.has_text for chunk in chunks])[order],
        )


@dataclass(frozen=True)
class ShardEnd:
    """Follows the last record of a shard down the pipeline: the writer may commit it once this arrives.

    ``samples`` counts the shard's samples (embedded or sample errors, not shard-level errors), so the
    writer checks that every one of them reached it before it writes.
    """

    source: ShardSource
    shard: str
    samples: int
