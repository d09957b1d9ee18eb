"""JPEG decode on the model's device (``--decode gpu``): JPEG bytes in, model-ready pixels and perceptual hashes out.

The reader threads only read each JPEG's header (size, EXIF orientation), hash its bytes and read the caption
and metadata (``prepare_for_device``); the JPEG travels to the model as bytes (``ModelInput.encoded``). There,
``DeviceDecodingEncoder.embed_jpegs`` decodes a batch with torchvision's ``decode_jpeg`` (nvJPEG on CUDA;
libjpeg-turbo when the device is the CPU, so the same code runs in the tests), turns each image upright, resizes
and crops it with the very torchvision steps of open_clip's eval transform (``ImagePreprocessor.geometry``, which
take tensors as well as Pillow images), computes imagehash's pHash from the decoded image (Pillow's luma and
Lanczos resampling in its own fixed-point arithmetic, then the DCT, so the hash equals ``imagehash.phash`` of the
same pixels), then normalises and embeds. Nothing decoded crosses back to the CPU but vectors and hashes.

An image the device path does not take (not an RGB or grayscale JPEG, over the pixel limit, a caption problem)
goes the CPU way in the reader; a JPEG the device decoder refuses goes the CPU way in the model handler
(``mmembed.beam.embed``); both are counted, and neither fails its sample.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from open_clip.transform import ResizeKeepRatio
from PIL import ExifTags, Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import functional as TF

from mmembed.config import DecodeConfig
from mmembed.decode import DecodeError, decode_caption, decode_metadata, reads_caption, upright_size
from mmembed.encoders.openclip import OpenClipEncoder
from mmembed.preprocess import prepare_sample
from mmembed.records import DecodedSample, EncodedImage, ModelInput, RawSample, SampleError

log = logging.getLogger(__name__)

# torch.frombuffer warns (once) that the JPEG's bytes object is read-only; the decoder only reads it, and a copy
# of every JPEG would cost the model's process a memcpy per image for nothing.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning, module=__name__)

JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG with extra frames appended; the first frame is the image
DEVICE_MODES = ("RGB", "L")  # colour spaces decode_jpeg turns into RGB as Pillow does (CMYK/YCCK go the CPU way)
# EXIF orientation -> (swap height and width, then flip these dims) on C x H x W: Pillow's exif_transpose
ORIENTATIONS: dict[int, tuple[bool, tuple[int, ...]]] = {
    1: (False, ()),
    2: (False, (-1,)),  # mirrored
    3: (False, (-2, -1)),  # rotated 180
    4: (False, (-2,)),  # flipped
    5: (True, ()),  # transposed
    6: (True, (-1,)),  # rotated 90 clockwise to be upright
    7: (True, (-2, -1)),  # transversed
    8: (True, (-2,)),  # rotated 90 counter-clockwise to be upright
}
DECODE_CHUNK = 64  # JPEGs decoded per decode_jpeg call: bounds the full-size images held on the device at once
PHASH_CANVAS_PIXELS = 1 << 24  # per pHash batch: about 400 MB of canvas, float32 and float64 luma on the device
# imagehash.phash: grayscale, Lanczos resize to 32 x 32, 2-D DCT-II, top-left 8 x 8 against their median
PHASH_SIDE = 32
HASH_SIDE = 8
PRECISION_BITS = 22  # Pillow's fixed-point precision when resampling 8-bit images (32 - 8 - 2)
LANCZOS_SUPPORT = 3.0
LUMA_WEIGHTS = (19595, 38470, 7471)  # Pillow's RGB -> L, in 1/65536: L = (R*19595 + G*38470 + B*7471 + 32768) >> 16


@dataclass(frozen=True)
class JpegHeader:
    """What the reader learns of a JPEG without decoding a pixel."""

    width: int  # as stored, before EXIF orientation
    height: int
    orientation: int  # a key of ORIENTATIONS

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied, as the CPU path records them."""
        return upright_size((self.width, self.height), self.orientation)


def read_jpeg_header(data: bytes, max_pixels: int) -> JpegHeader | None:
    """The header of a JPEG the device path can take, or None for any image it should not: not a JPEG, a colour
    space other than RGB/grayscale, over ``max_pixels``, an unreadable header. The CPU path decodes those, or
    records their error exactly as it does without ``--decode gpu``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in JPEG_FORMATS or image.mode not in DEVICE_MODES:
                return None
            width, height = image.size
            orientation = image.getexif().get(ExifTags.Base.Orientation, 1)  # as exif_transpose reads it
            orientation = orientation if orientation in ORIENTATIONS else 1  # exif_transpose ignores the rest
    except Exception:  # noqa: BLE001 - whatever the header raises, the CPU path decides what the image is
        return None
    if width * height > max_pixels:
        return None
    return JpegHeader(width, height, orientation)


def _encoded_only(image: Any) -> Any:
    """``prepare_sample`` leaves an ``EncodedImage`` as it is and never calls this."""
    raise TypeError(f"an encoded JPEG is resized on the model's device, not here (got {type(image).__name__})")


def prepare_for_device(
    raw: RawSample, config: DecodeConfig, tokenize: Callable[[list[str]], np.ndarray]
) -> ModelInput | SampleError | None:
    """The reader's share of a sample whose image the device decodes: header, sha256, caption, metadata and
    tokens, no pixels (the row's phash is filled on the device). None when the CPU path must take the whole
    sample: the image is not a JPEG the device takes, or the caption or metadata fail, so its row or error is
    exactly what ``mmembed.decode.decode_sample`` makes of it."""
    image_ext = next(ext for ext in config.image_extensions if ext in raw.members)
    data = raw.members[image_ext]
    header = read_jpeg_header(data, config.max_image_pixels)
    if header is None:
        return None
    read_caption = reads_caption(raw, config)
    if read_caption is None:
        return None
    try:
        caption = decode_caption(raw.members[config.caption_key]) if read_caption else None
        metadata = decode_metadata(raw.members[config.metadata_key]) if config.metadata_key in raw.members else None
    except DecodeError:
        return None
    width, height = header.upright_size
    sample = DecodedSample(
        shard=raw.shard,
        key=raw.key,
        offset=raw.member_offsets[image_ext],
        image_member=f"{raw.key}.{image_ext}",
        image=EncodedImage(raw, image_ext, header.orientation),
        caption=caption,
        metadata=metadata,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest() if config.fingerprints else None,
        phash=None,
    )
    return prepare_sample(sample, _encoded_only, tokenize)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A decoded C x H x W image turned as its EXIF orientation says (Pillow's ``ImageOps.exif_transpose``)."""
    swap, flips = ORIENTATIONS[orientation]
    if swap:
        image = image.transpose(-2, -1)
    return image.flip(flips) if flips else image


# --------------------------------------------------------------------------------------------------
# Perceptual hash: imagehash.phash on the device, bit for bit (Pillow's arithmetic, not an approximation of it)


def lanczos(x: np.ndarray) -> np.ndarray:
    """Pillow's Lanczos-3 filter: sinc(x) * sinc(x / 3) on [-3, 3)."""
    inside = (x >= -LANCZOS_SUPPORT) & (x < LANCZOS_SUPPORT)
    return np.where(inside, np.sinc(x) * np.sinc(x / LANCZOS_SUPPORT), 0.0)


@lru_cache(maxsize=1024)
def lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's fixed-point Lanczos weights (``out_size`` x ``in_size`` integers, float64) for resampling a line of
    an 8-bit image: ``precompute_coeffs`` then ``normalize_coeffs_8bpc`` of its Resample.c, vectorised."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = LANCZOS_SUPPORT * filterscale
    centers = (np.arange(out_size) + 0.5) * scale
    first = np.maximum((centers - support + 0.5).astype(np.int64), 0)  # C's (int) truncates, as astype does
    last = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    columns = np.arange(in_size)
    taps = lanczos((columns[None, :] - centers[:, None] + 0.5) * (1.0 / filterscale))
    taps = np.where((columns >= first[:, None]) & (columns < last[:, None]), taps, 0.0)
    totals = taps.sum(axis=1, keepdims=True)
    taps = np.divide(taps, totals, out=taps, where=totals != 0)
    scaled = taps * (1 << PRECISION_BITS)
    return np.where(scaled < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5))


@lru_cache(maxsize=512)
def _weights_on(device: torch.device, in_size: int) -> torch.Tensor:
    """``lanczos_weights(in_size, PHASH_SIDE)`` kept on ``device``: an image side seen before costs no copy."""
    return torch.from_numpy(lanczos_weights(in_size, PHASH_SIDE)).to(device)


def _round_fixed_point(sums: torch.Tensor) -> torch.Tensor:
    """Pillow's 8-bit result of a fixed-point sum: (sum + half) >> PRECISION_BITS, clipped to 0..255."""
    half = float(1 << (PRECISION_BITS - 1))
    return torch.div(sums + half, float(1 << PRECISION_BITS), rounding_mode="floor").clamp_(0, 255)


def luma(images: torch.Tensor) -> torch.Tensor:
    """uint8 ... x 3 x H x W RGB -> Pillow's ``convert("L")`` as float64 ... x H x W integers. Exact: in float32
    every partial sum of (R*19595 + G*38470 + B*7471 + 32768) is an integer below 2**24."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32, device=images.device).view(3, 1, 1)
    total = (images.float() * weights).sum(-3)
    return torch.div(total + 32768.0, 65536.0, rounding_mode="floor").double()


def phash_thumbnails(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 3 x H x W RGB images of any sizes -> float64 N x 32 x 32: the grayscale thumbnails imagehash.phash takes
    its DCT of. Pillow's luma, then Pillow's two-pass Lanczos resize (horizontal, rounded to 8 bits, then vertical;
    a side already 32 comes through unchanged, as Pillow skips that pass), all exact in float64. The luma runs once
    over a zero-padded canvas; the resampling is two small matmuls per image, their rounding once per batch."""
    sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
    gray = luma(_canvas(images))
    rows = [gray[i, :height, :width] @ _weights_on(gray.device, width).T for i, (height, width) in enumerate(sizes)]
    horizontal = _round_fixed_point(torch.cat(rows)).split([height for height, _ in sizes])
    vertical = [_weights_on(gray.device, height) @ part for part, (height, _) in zip(horizontal, sizes, strict=True)]
    return _round_fixed_point(torch.stack(vertical))


def _canvas(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """The images in one zero-padded uint8 N x 3 x H x W tensor (the largest height and width), one copy each."""
    height = max(int(image.shape[-2]) for image in images)
    width = max(int(image.shape[-1]) for image in images)
    canvas = images[0].new_zeros((len(images), 3, height, width))
    for slot, image in zip(canvas, images, strict=True):
        slot[:, : image.shape[-2], : image.shape[-1]].copy_(image)
    return canvas


def perceptual_hashes(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """imagehash.phash of each uint8 3 x H x W RGB image: uint8 N x 8 on the device, row i the 8 bytes the CPU
    path stores for image i. Images are taken in order of size, in groups whose padded canvas stays within
    PHASH_CANVAS_PIXELS, which bounds the memory."""
    order = sorted(range(len(images)), key=lambda i: tuple(images[i].shape))
    groups = _canvas_groups([images[i] for i in order], PHASH_CANVAS_PIXELS)
    bits = torch.cat([phash_bits(phash_thumbnails([images[order[k]] for k in group])) for group in groups])
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return bits[inverse.to(bits.device)]


def _canvas_groups(images: Sequence[torch.Tensor], budget: int) -> list[list[int]]:
    """Consecutive runs of ``images`` whose zero-padded canvas (count x largest height x largest width) stays
    within ``budget`` pixels; an image larger than that on its own is a group by itself."""
    groups: list[list[int]] = []
    height = width = 0
    for i, image in enumerate(images):
        h, w = max(height, int(image.shape[-2])), max(width, int(image.shape[-1]))
        if groups and (len(groups[-1]) + 1) * h * w <= budget:
            groups[-1].append(i)
            height, width = h, w
        else:
            groups.append([i])
            height, width = int(image.shape[-2]), int(image.shape[-1])
    return groups


@lru_cache(maxsize=8)
def _dct_rows(device: torch.device) -> torch.Tensor:
    """The first HASH_SIDE rows of scipy.fftpack's unnormalised DCT-II matrix on PHASH_SIDE points."""
    k = np.arange(HASH_SIDE)[:, None]
    n = np.arange(PHASH_SIDE)[None, :]
    return torch.from_numpy(2.0 * np.cos(np.pi * k * (2 * n + 1) / (2 * PHASH_SIDE))).to(device)


def phash_bits(thumbnails: torch.Tensor) -> torch.Tensor:
    """float64 N x 32 x 32 thumbnails -> uint8 N x 8 on their device: imagehash.phash's 64 bits (low-frequency DCT
    coefficient > their median, the mean of the middle two as numpy's median), packed row-major as np.packbits."""
    dct = _dct_rows(thumbnails.device)
    low = (dct @ thumbnails @ dct.T).flatten(1)
    ordered = low.sort(dim=1).values
    middle = low.shape[1] // 2
    median = (ordered[:, middle - 1] + ordered[:, middle]) / 2
    bits = (low > median[:, None]).view(-1, HASH_SIDE, HASH_SIDE).to(torch.uint8)
    place = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=bits.device)
    return (bits * place).sum(dim=2, dtype=torch.uint8)


# --------------------------------------------------------------------------------------------------
# Decode + geometry on the device


def apply_geometry(steps: Sequence[Any], images: torch.Tensor) -> torch.Tensor:
    """open_clip's eval resize/crop steps (``ImagePreprocessor.geometry``) on a uint8 N x 3 x H x W batch of one
    size. torchvision's Resize, CenterCrop and open_clip's CenterCropOrPad take tensors as they are (bicubic with
    antialias, like Pillow); open_clip's ResizeKeepRatio reads a Pillow-style ``size``, so its output size is
    computed by its own ``get_params`` and the resize done by torchvision."""
    for step in steps:
        if isinstance(step, ResizeKeepRatio):
            size = step.get_params(_PillowSize(images), step.size, step.longest)
            images = TF.resize(images, size, step.interpolation, antialias=True)
        else:
            images = step(images)
    return images


@dataclass(frozen=True)
class _PillowSize:
    """A tensor's (width, height) as Pillow's ``Image.size``, for open_clip code that reads it."""

    images: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return (self.images.shape[-1], self.images.shape[-2])


@dataclass
class DecodedBatch:
    """What the device made of a batch of JPEGs: pixels and hashes of those it decoded, in request order."""

    decoded: list[int]  # request indices, ascending
    pixels: torch.Tensor | None  # uint8 len(decoded) x H x W x 3 on the device; None when nothing decoded
    phashes: list[bytes] = field(default_factory=list)  # 8 bytes per decoded JPEG (empty when not asked for)
    refused: dict[int, str] = field(default_factory=dict)  # request index -> why the device path refused it


class DeviceImageDecoder:
    """Batches of (JPEG bytes, EXIF orientation) -> model-ready uint8 pixels and perceptual hashes on one device."""

    def __init__(self, geometry: Sequence[Any], device: str) -> None:
        self.geometry = list(geometry)
        self.device = torch.device(device)

    def check(self) -> None:
        """Decode a tiny JPEG on the device now, so a decoder that cannot work here (a torchvision built without
        nvJPEG) stops the job at start instead of sending every image the CPU way."""
        buffer = io.BytesIO()
        Image.new("RGB", (16, 8), (200, 30, 90)).save(buffer, "JPEG")
        try:
            decode_jpeg([torch.frombuffer(buffer.getvalue(), dtype=torch.uint8)], ImageReadMode.RGB, self.device)
        except Exception as exc:  # noqa: BLE001 - any failure means the same: the device cannot decode JPEGs
            raise RuntimeError(
                f"--decode gpu: torchvision cannot decode JPEGs on {self.device} ({type(exc).__name__}: {exc}); "
                "fix: install a torchvision built with nvJPEG for this CUDA, or run with --decode cpu"
            ) from exc

    @torch.inference_mode()
    def decode(self, jpegs: Sequence[tuple[bytes, int]], hashes: bool = True) -> DecodedBatch:
        """Decode, turn upright, resize/crop and (with ``hashes``) pHash every JPEG it can, DECODE_CHUNK at a time;
        the hashes come to the host once, at the end, so the chunks queue on the device without waiting."""
        batch = DecodedBatch([], None)
        pixels: list[torch.Tensor] = []
        phashes: list[torch.Tensor] = []
        for start in range(0, len(jpegs), DECODE_CHUNK):
            chunk = jpegs[start : start + DECODE_CHUNK]
            images, refused = self._decode_chunk([data for data, _ in chunk])
            images = {i: upright(image, chunk[i][1]) for i, image in images.items()}
            done, chunk_pixels = self._model_pixels(images, refused)
            if done:
                pixels.append(chunk_pixels)
                phashes += [perceptual_hashes([images[i] for i in done])] if hashes else []
            batch.decoded += [start + i for i in done]
            batch.refused.update({start + i: reason for i, reason in refused.items()})
        if pixels:
            batch.pixels = torch.cat(pixels).permute(0, 2, 3, 1)
        if phashes:
            batch.phashes = [row.tobytes() for row in torch.cat(phashes).cpu().numpy()]
        return batch

    def _decode_chunk(self, datas: list[bytes]) -> tuple[dict[int, torch.Tensor], dict[int, str]]:
        """index -> decoded uint8 3 x H x W RGB, and index -> reason for each JPEG the decoder refused. One call
        decodes the chunk (nvJPEG's batched decode); when it raises, each JPEG is tried alone to find the culprits."""
        tensors = [torch.frombuffer(data, dtype=torch.uint8) for data in datas]
        try:
            return dict(enumerate(decode_jpeg(tensors, ImageReadMode.RGB, self.device))), {}
        except RuntimeError:
            pass
        images: dict[int, torch.Tensor] = {}
        refused: dict[int, str] = {}
        for i, tensor in enumerate(tensors):
            try:
                images[i] = decode_jpeg([tensor], ImageReadMode.RGB, self.device)[0]
            except RuntimeError as exc:
                refused[i] = _reason("the device decoder refused it", exc)
        return images, refused

    def _model_pixels(self, images: dict[int, torch.Tensor], refused: dict[int, str]) -> tuple[list[int], torch.Tensor]:
        """(indices, uint8 N x 3 x h x w model inputs) for ``images``, indices ascending. Images of one size are
        resized together; a size group the geometry raises on is added to ``refused`` (the CPU path takes it)."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i in sorted(images):
            by_size.setdefault(tuple(images[i].shape), []).append(i)
        out: dict[int, torch.Tensor] = {}
        for indices in by_size.values():
            group = images[indices[0]].unsqueeze(0) if len(indices) == 1 else torch.stack([images[i] for i in indices])
            try:
                resized = apply_geometry(self.geometry, group)
            except RuntimeError as exc:
                refused.update({i: _reason("resizing it on the device failed", exc) for i in indices})
                continue
            out.update(zip(indices, resized, strict=True))
        done = sorted(out)
        return done, torch.stack([out[i] for i in done]) if done else torch.empty(0)


def _reason(what: str, exc: Exception) -> str:
    """A refusal's reason for the log: what failed and the last line of the exception, cut short."""
    message = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    return f"{what} ({type(exc).__name__}: {message[:300]})"


@dataclass
class DeviceEmbeddings:
    """``embed_jpegs``'s answer, small enough to cross from a shared model's process: vectors and hashes of the
    JPEGs the device decoded (in request order), and the reasons for those it refused."""

    decoded: list[int]
    embeddings: np.ndarray  # float32 len(decoded) x dim, L2-normalised
    phashes: list[bytes]
    refused: dict[int, str]


class DeviceDecodingEncoder(OpenClipEncoder):
    """An ``OpenClipEncoder`` that also takes JPEG bytes: it decodes, resizes, hashes and embeds them on its own
    device in one call, so a model shared across processes receives compressed bytes and sends back vectors."""

    decoder: DeviceImageDecoder

    @classmethod
    def wrap(cls, encoder: OpenClipEncoder) -> DeviceDecodingEncoder:
        """The same loaded model, with a device decoder that has been checked to work."""
        wrapped = cls(encoder.model, encoder.preprocessor, encoder.device, encoder.dtype)
        wrapped.decoder = DeviceImageDecoder(encoder.preprocessor.geometry, encoder.device)
        wrapped.decoder.check()
        if encoder.device == "cpu":
            log.info("--decode gpu on the CPU: JPEGs are decoded by torchvision's libjpeg-turbo in the model's process")
        return wrapped

    @torch.inference_mode()
    def embed_jpegs(self, jpegs: Sequence[tuple[bytes, int]], hashes: bool = True) -> DeviceEmbeddings:
        """(JPEG bytes, EXIF orientation) pairs -> image embeddings and pHashes of those the device decodes."""
        batch = self.decoder.decode(jpegs, hashes)
        if batch.pixels is None:
            return DeviceEmbeddings([], np.zeros((0, 0), np.float32), [], batch.refused)
        return DeviceEmbeddings(batch.decoded, self.embed_pixel_tensor(batch.pixels), batch.phashes, batch.refused)
