"""Raw member bytes -> RGB image, caption and metadata, with a precise reason when one fails."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import imagehash
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from mmembed.config import DecodeConfig
from mmembed.records import STAGE_DECODE, DecodedSample, RawSample, SampleError
from mmembed.schema import utf8_safe

FIX_IMAGE = "fix: re-export the image as JPEG/PNG/WebP, or remove the sample"
_TOO_DEEP = "metadata JSON is nested deeper than Python's JSON parser allows; fix: flatten it"

# Our own limit (DecodeConfig.max_image_pixels, checked from the header by decode_image before any pixel
# is decoded) replaces Pillow's process-wide one, so --max-image-pixels really sets the limit; the images
# that embedding, search and serving read all go through decode_image. Set once: decoding runs on threads.
Image.MAX_IMAGE_PIXELS = None


class DecodeError(ValueError):
    """One member could not be decoded; ``code`` and the message are recorded in errors/."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode_image(data: bytes, max_pixels: int, reduce_to: int | None = None) -> Image.Image:
    """``decode_image_and_size`` without the size."""
    return decode_image_and_size(data, max_pixels, reduce_to)[0]


def decode_image_and_size(
    data: bytes, max_pixels: int, reduce_to: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode JPEG/PNG/WebP/... bytes to an upright RGB image, refusing images over ``max_pixels``.

    The pixel count is checked from the header before any pixel data is decoded, so a
    decompression bomb costs nothing. EXIF orientation is applied; palette, alpha, CMYK,
    grayscale and 16-bit images become 8-bit RGB (alpha composited on white). Whatever a
    malformed file makes Pillow raise is this image's ``bad_image``, never the caller's crash.

    ``reduce_to``: a JPEG at least twice that size on both sides is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling, ``Image.draft``) while both sides stay >= ``reduce_to``: several times cheaper
    than a full decode that the model's resize then throws away. Other formats decode in full. The size
    returned beside the image is the image's own upright (width, height), read from the header before any
    reduction, so a reduced decode still records what the file holds.
    """
    if not data:
        raise DecodeError("empty_image", f"image member is empty (0 bytes); {FIX_IMAGE}")
    try:
        image = Image.open(io.BytesIO(data))
        _check_pixels(image.size, max_pixels)
        size = upright_size(image.size, image.getexif().get(ExifTags.Base.Orientation, 1))
        if reduce_to and image.format == "JPEG":
            image.draft("RGB", (reduce_to, reduce_to))
        image.load()
        return to_rgb(ImageOps.exif_transpose(image)), size
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(
            "bad_image", f"not a decodable image (unrecognised format, starts with {data[:8]!r}); {FIX_IMAGE}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise TypeError, struct.error, ... on malformed files
        raise DecodeError("bad_image", f"not a decodable image ({type(exc).__name__}: {exc}); {FIX_IMAGE}") from None


def upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) as stored -> as shown once EXIF ``orientation`` is applied: 5-8 turn by 90 degrees
    (``ImageOps.exif_transpose``'s rule; other values leave the image as it is)."""
    width, height = size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image whose header size is over ``max_pixels`` (the decompression-bomb guard)."""
    width, height = size
    if width * height > max_pixels:
        raise DecodeError(
            "image_too_large",
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            "(decompression-bomb guard); fix: downscale it, or raise --max-image-pixels if it is genuine",
        )


def perceptual_hash(image: Image.Image) -> bytes:
    """64-bit DCT perceptual hash (imagehash.phash) as 8 bytes: near-identical after re-encode or resize."""
    return np.packbits(imagehash.phash(image).hash.ravel()).tobytes()


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white rather than dropped to black."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    return image.convert("RGB")


def decode_caption(data: bytes) -> str:
    """UTF-8 caption text, surrounding whitespace stripped; invalid UTF-8 is an error, never mangled."""
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise DecodeError(
            "bad_caption_encoding",
            f"caption is not valid UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 4]!r}); "
            "fix: re-encode the caption file as UTF-8",
        ) from None


def decode_metadata(data: bytes) -> dict[str, Any]:
    """A JSON object that can be stored as UTF-8 JSON text; anything else is an error here, not a crash later."""
    value = _parse_json(data)
    if not isinstance(value, dict):
        raise DecodeError(
            "bad_metadata", f"metadata is JSON {type(value).__name__}, not an object; fix: write a JSON object"
        )
    _check_storable(value)
    return value


def _parse_json(data: bytes) -> Any:
    """json.loads, with each way Python's parser refuses a document turned into a ``bad_metadata`` reason."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(
            "bad_metadata", f"metadata is not valid JSON ({exc}); fix: write one JSON object per sample"
        ) from None
    except RecursionError:
        raise DecodeError("bad_metadata", _TOO_DEEP) from None
    except ValueError as exc:  # e.g. an integer over Python's int-str conversion limit (4,300 digits)
        raise DecodeError(
            "bad_metadata", f"metadata JSON cannot be read ({exc}); fix: store very long numbers as strings"
        ) from None


def _check_storable(value: dict[str, Any]) -> None:
    """The metadata is stored as UTF-8 JSON text: refuse a lone surrogate (``"\\ud800"``) now, not in the writer."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DecodeError(
            "bad_metadata",
            f"metadata holds {utf8_safe(exc.object[exc.start : exc.end])}, a lone surrogate escape (half of a "
            "UTF-16 pair), which is not a character and cannot be stored as UTF-8; fix: remove it, or write "
            "the whole character (e.g. \\ud83d\\ude00)",
        ) from None
    except RecursionError:
        raise DecodeError("bad_metadata", _TOO_DEEP) from None


def reads_caption(raw: RawSample, config: DecodeConfig) -> bool | None:
    """Whether the sample's caption member is read (``--captions``); None when it is required and missing."""
    read = config.captions != "none" and config.caption_key in raw.members
    return None if config.captions == "required" and not read else read


def decode_sample(raw: RawSample, config: DecodeConfig, reduce_to: int | None = None) -> DecodedSample | SampleError:
    """Decode one raw sample; the first member that fails names the error. ``reduce_to`` as in ``decode_image``
    (the recorded width and height are always the image's own)."""
    image_ext = next(ext for ext in config.image_extensions if ext in raw.members)
    image_member = f"{raw.key}.{image_ext}"
    read_caption = reads_caption(raw, config)
    if read_caption is None:
        return _error(
            raw,
            f"{raw.key}.{config.caption_key}",
            "no_caption",
            f"sample has no caption member (.{config.caption_key}); fix: add one, set the caption key, or embed "
            "image-only samples with --captions optional (or none)",
        )
    stage_member = image_member
    try:
        image_bytes = raw.members[image_ext]
        image, (width, height) = decode_image_and_size(image_bytes, config.max_image_pixels, reduce_to)
        caption = None
        if read_caption:
            stage_member = f"{raw.key}.{config.caption_key}"
            caption = decode_caption(raw.members[config.caption_key])
        metadata = None
        if config.metadata_key in raw.members:
            stage_member = f"{raw.key}.{config.metadata_key}"
            metadata = decode_metadata(raw.members[config.metadata_key])
    except DecodeError as exc:
        return _error(raw, stage_member, exc.code, str(exc))
    return DecodedSample(
        shard=raw.shard,
        key=raw.key,
        offset=raw.member_offsets[image_ext],
        image_member=image_member,
        image=image,
        caption=caption,
        metadata=metadata,
        width=width,
        height=height,
        sha256=hashlib.sha256(image_bytes).hexdigest() if config.fingerprints else None,
        phash=perceptual_hash(image) if config.fingerprints else None,
    )


def _error(raw: RawSample, member: str, code: str, reason: str) -> SampleError:
    return SampleError(raw.shard, raw.key, member, STAGE_DECODE, code, f"shard {raw.shard}: member {member}: {reason}")
