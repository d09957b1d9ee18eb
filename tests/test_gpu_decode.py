"""``--decode gpu``: JPEGs decoded, turned upright, resized, cropped and hashed on the model's device.

Everything here runs on the CPU (the device path's decoder is then torchvision's libjpeg-turbo), except the tests
marked ``gpu``, which run the same checks with nvJPEG on CUDA. The tolerances are against the CPU path on
scikit-image's real photos, upscaled to web size (800-1,200 px) and re-encoded as JPEG:

* model-input pixels, in 0..255 units, against Pillow decoding the JPEG in full (``--exact-decode``): mean absolute
  difference per photo <= PIXEL_MEAN, any pixel <= PIXEL_MAX (measured: <= 0.15 per photo, 0.10 overall, max 8;
  torch's antialiased bicubic against Pillow's, both from identical decoded pixels). Against the default CPU path
  (reduced-scale decode): no further from it than the full decode is, plus PIXEL_MEAN.
* image embeddings of mmembed-tiny: cosine >= COSINE_EXACT with the full-decode path (measured >= 0.999997),
  >= COSINE_DEFAULT with the default CPU path (measured >= 0.9993).
* perceptual hash: equal to ``imagehash.phash`` of Pillow's full decode in all 64 bits (Pillow's luma and Lanczos
  arithmetic are reproduced exactly); <= PHASH_BITS_DEFAULT bits from the default CPU path's hash, which is taken
  of the reduced-scale decode (measured <= 2).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import mmembed.gpudecode as gpudecode
from mmembed.cli import main
from mmembed.config import DecodeConfig, EncoderConfig
from mmembed.decode import decode_image, perceptual_hash
from mmembed.embed.resume import ShardRecord, first_difference, job_settings
from mmembed.embed.summary import ShardCounts
from mmembed.encoders.openclip import ImagePreprocessor, OpenClipEncoder, resolve_preprocess_cfg
from mmembed.gpudecode import (
    ORIENTATIONS,
    DeviceDecodingEncoder,
    DeviceImageDecoder,
    read_jpeg_header,
    upright,
)
from mmembed.records import ShardSource
from tests.helpers import embed, read_dir
from tests.photos import PHOTOS, load_photo
from tests.tarmaker import image_bytes, jpeg_bytes, write_tar

PIXEL_MEAN = 0.2
PIXEL_MAX = 10
COSINE_EXACT = 0.9999
COSINE_DEFAULT = 0.998
PHASH_BITS_DEFAULT = 4
NO_LIMIT = 10**9
TINY_ARGS = ["--model", "mmembed-tiny", "--random-init", "--device", "cpu", "--batch-size", "8"]


def web_photo(name: str, rng: np.random.Generator, orientation: int = 1) -> bytes:
    """scikit-image's photo ``name`` upscaled to a long side of 800-1,200 px, as a JPEG of quality 80-95 with
    4:4:4, 4:2:2 or 4:2:0 chroma; stored turned so that EXIF ``orientation`` makes it upright again."""
    image = load_photo(name).convert("RGB")
    scale = int(rng.integers(800, 1201)) / max(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    if orientation != 1:
        image = image.transpose(INVERSE_TRANSPOSE[orientation])
        exif[0x0112] = orientation
    quality, subsampling = int(rng.integers(80, 96)), int(rng.integers(0, 3))
    return image_bytes(image, "JPEG", quality=quality, subsampling=subsampling, exif=exif)


# The transpose that stores an upright image so that EXIF orientation N turns it back (Pillow's exif_transpose
# applies the inverse of each of these; 6 and 8 are each other's inverse, the others their own).
INVERSE_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.fixture(scope="module")
def web_jpegs() -> list[bytes]:
    """Every photo of tests.photos at web size, seeded."""
    rng = np.random.default_rng(0)
    return [web_photo(name, rng) for name in sorted(PHOTOS)]


@pytest.fixture(scope="module")
def preprocessor() -> ImagePreprocessor:
    return ImagePreprocessor(resolve_preprocess_cfg(EncoderConfig(model="mmembed-tiny", random_init=True)))


def pil_pixels(preprocessor: ImagePreprocessor, jpegs: list[bytes], reduce: bool) -> np.ndarray:
    """The CPU path's model inputs: Pillow decode (in full, or reduced-scale as by default) + open_clip's geometry."""
    reduce_to = preprocessor.input_side if reduce else None
    return np.stack([preprocessor.to_pixels(decode_image(data, NO_LIMIT, reduce_to)) for data in jpegs])


def hamming(a: bytes, b: bytes) -> int:
    return bin(int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).count("1")


def mean_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference per image (first axis), in 0..255 units."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1).mean(axis=1)


# --------------------------------------------------------------------------------------------------
# Header, orientation


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_header_and_upright_pixels_match_pillow_for_every_exif_orientation(orientation: int) -> None:
    data = web_photo("chelsea", np.random.default_rng(orientation), orientation)
    pil = decode_image(data, NO_LIMIT)  # EXIF applied by Pillow's exif_transpose
    header = read_jpeg_header(data, NO_LIMIT)
    assert header is not None and header.orientation == orientation
    assert header.upright_size == pil.size
    decoded = DeviceImageDecoder([], "cpu")._decode_chunk([data])[0][0]
    np.testing.assert_array_equal(upright(decoded, orientation).permute(1, 2, 0).numpy(), np.asarray(pil))


def test_header_sends_every_other_image_the_cpu_way() -> None:
    photo = load_photo("astronaut").convert("RGB")
    assert read_jpeg_header(image_bytes(photo, "PNG"), NO_LIMIT) is None
    assert read_jpeg_header(image_bytes(photo, "WEBP"), NO_LIMIT) is None
    assert read_jpeg_header(image_bytes(photo.convert("CMYK"), "JPEG"), NO_LIMIT) is None
    assert read_jpeg_header(b"not an image at all", NO_LIMIT) is None
    jpeg = image_bytes(photo, "JPEG")
    assert read_jpeg_header(jpeg, photo.width * photo.height - 1) is None  # over --max-image-pixels
    assert read_jpeg_header(jpeg, photo.width * photo.height) is not None
    assert read_jpeg_header(image_bytes(photo.convert("L"), "JPEG"), NO_LIMIT) is not None  # grayscale: device


# --------------------------------------------------------------------------------------------------
# Pixels, hashes and embeddings against the CPU path


def test_device_pixels_are_within_tolerance_of_the_pil_path(
    web_jpegs: list[bytes], preprocessor: ImagePreprocessor
) -> None:
    batch = DeviceImageDecoder(preprocessor.geometry, "cpu").decode([(data, 1) for data in web_jpegs])
    assert batch.decoded == list(range(len(web_jpegs))) and not batch.refused
    device = batch.pixels.numpy()
    exact, reduced = pil_pixels(preprocessor, web_jpegs, False), pil_pixels(preprocessor, web_jpegs, True)
    assert device.shape == exact.shape and device.dtype == np.uint8
    assert mean_abs(device, exact).max() <= PIXEL_MEAN
    assert np.abs(device.astype(np.int16) - exact).max() <= PIXEL_MAX
    assert np.all(mean_abs(device, reduced) <= mean_abs(exact, reduced) + PIXEL_MEAN)


@pytest.mark.parametrize(
    ("resize_mode", "size"),
    [("shortest", [160, 256]), ("longest", [224, 224]), ("longest", [192, 256]), ("squash", [200, 240])],
)
def test_every_resize_mode_matches_the_pil_geometry(
    web_jpegs: list[bytes], preprocessor: ImagePreprocessor, resize_mode: str, size: list[int]
) -> None:
    """Non-square inputs go through open_clip's ResizeKeepRatio, 'longest' pads with CenterCropOrPad."""
    other = ImagePreprocessor({**preprocessor.cfg, "resize_mode": resize_mode, "size": size})
    batch = DeviceImageDecoder(other.geometry, "cpu").decode([(data, 1) for data in web_jpegs[:6]], hashes=False)
    exact = pil_pixels(other, web_jpegs[:6], False)
    assert batch.pixels.shape == exact.shape and batch.phashes == []
    assert mean_abs(batch.pixels.numpy(), exact).max() <= PIXEL_MEAN


def test_device_phash_is_imagehash_of_the_same_pixels(web_jpegs: list[bytes], preprocessor: ImagePreprocessor) -> None:
    as_shipped = [jpeg_bytes(name, size=10_000) for name in sorted(PHOTOS)]  # 256-640 px, grayscale ones too
    jpegs = web_jpegs + as_shipped
    batch = DeviceImageDecoder(preprocessor.geometry, "cpu").decode([(data, 1) for data in jpegs])
    for data, phash in zip(jpegs, batch.phashes, strict=True):
        assert phash == perceptual_hash(decode_image(data, NO_LIMIT))  # imagehash.phash, all 64 bits
        default = perceptual_hash(decode_image(data, NO_LIMIT, preprocessor.input_side))
        assert hamming(phash, default) <= PHASH_BITS_DEFAULT


def test_device_embeddings_are_within_tolerance_of_the_pil_path(
    web_jpegs: list[bytes], preprocessor: ImagePreprocessor, tiny_config: EncoderConfig
) -> None:
    encoder = DeviceDecodingEncoder.wrap(OpenClipEncoder.load(tiny_config))
    answer = encoder.embed_jpegs([(data, 1) for data in web_jpegs])
    assert answer.decoded == list(range(len(web_jpegs))) and len(answer.phashes) == len(web_jpegs)
    exact = encoder.embed_pixels(pil_pixels(preprocessor, web_jpegs, False))
    default = encoder.embed_pixels(pil_pixels(preprocessor, web_jpegs, True))
    assert np.einsum("ij,ij->i", answer.embeddings, exact).min() >= COSINE_EXACT
    assert np.einsum("ij,ij->i", answer.embeddings, default).min() >= COSINE_DEFAULT


def test_a_jpeg_the_decoder_refuses_costs_only_itself(web_jpegs: list[bytes], preprocessor: ImagePreprocessor) -> None:
    """A truncated JPEG (its header is fine, so the reader sends it to the device) fails the batched decode; each
    JPEG is then tried alone, and only the bad one is refused, with the decoder's reason."""
    truncated = web_jpegs[1][: len(web_jpegs[1]) // 2]
    jpegs = [(web_jpegs[0], 1), (truncated, 1), (web_jpegs[2], 1)]
    batch = DeviceImageDecoder(preprocessor.geometry, "cpu").decode(jpegs)
    assert batch.decoded == [0, 2] and list(batch.refused) == [1]
    assert "truncated" in batch.refused[1] and batch.pixels.shape[0] == len(batch.phashes) == 2


# --------------------------------------------------------------------------------------------------
# The embed job


@pytest.fixture(scope="module")
def mixed_shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Web-size JPEGs (one stored turned, EXIF orientation 6), a PNG, a WebP, a CMYK JPEG and a truncated JPEG."""
    rng = np.random.default_rng(1)
    photo = load_photo("coffee").convert("RGB")
    images = {
        "a.jpg": web_photo("astronaut", rng),
        "b.jpg": web_photo("rocket", rng, orientation=6),
        "c.jpg": web_photo("grass", rng),
        "d.png": image_bytes(photo, "PNG"),
        "e.webp": image_bytes(photo, "WEBP", quality=90),
        "f.jpg": image_bytes(photo.convert("CMYK"), "JPEG", quality=90),
        "g.jpg": web_photo("page", rng)[:30_000],
        "h.jpg": web_photo("chelsea", rng),
    }
    members = []
    for name, data in images.items():
        key = name.split(".")[0]
        members += [(name, data), (f"{key}.txt", f"photo {key}".encode()), (f"{key}.json", b'{"n": 1}')]
    folder = tmp_path_factory.mktemp("mixed")
    return [str(write_tar(folder / "mixed.tar", members))]


def run_cli(shards: list[str], out: Path, *extra: str) -> dict:
    """``mmembed embed`` with the tiny model on the CPU; its summary."""
    assert main(["embed", "--shards", *shards, "--out", str(out), *TINY_ARGS, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def count_members(shards: list[str], suffix: str) -> int:
    return sum(name.endswith(suffix) for shard in shards for name in tarfile.open(shard).getnames())


RUNS = ("cpu", "gpu")
ROW_FIELDS = ("shard", "key", "offset", "caption", "metadata", "url", "width", "height", "sha256")


def test_embed_with_gpu_decode_on_the_cpu_equals_the_cpu_decode_run(
    demo_shards: list[str], mixed_shards: list[str], tmp_path: Path
) -> None:
    shards = [*demo_shards, *mixed_shards]
    cpu = run_cli(shards, tmp_path / "cpu")
    gpu = run_cli(shards, tmp_path / "gpu", "--decode", "gpu")
    want, got = read_dir(tmp_path / "cpu" / "embeddings"), read_dir(tmp_path / "gpu" / "embeddings")
    assert got.num_rows == want.num_rows == 38 + 7
    for name in ROW_FIELDS:
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    np.testing.assert_array_equal(got.column("text_embedding").to_pylist(), want.column("text_embedding").to_pylist())
    image = np.einsum(
        "ij,ij->i",
        np.array(got.column("image_embedding").to_pylist()),
        np.array(want.column("image_embedding").to_pylist()),
    )
    assert image.min() >= COSINE_DEFAULT
    phashes = zip(got.column("phash").to_pylist(), want.column("phash").to_pylist(), strict=True)
    bits = [hamming(a, b) for a, b in phashes]
    assert max(bits) <= PHASH_BITS_DEFAULT
    # The truncated JPEG is refused by the device decoder, then by Pillow: the same error row in both runs.
    errors = {
        run: read_dir(tmp_path / run / "errors").select(["key", "code", "reason"]).to_pylist() for run in ("cpu", "gpu")
    }
    assert errors["gpu"] == errors["cpu"] == [errors["cpu"][0]] and errors["cpu"][0]["code"] == "bad_image"
    counters = gpu["beam_counters"]
    demo_pngs = count_members(demo_shards, ".png")
    assert counters["gpu_decode.decoded"] == 4 + 38 - demo_pngs
    assert counters["gpu_decode.cpu_fallback.format"] == 3 + demo_pngs  # PNG, WebP, CMYK JPEG; the demo PNGs
    assert counters["gpu_decode.cpu_fallback.refused"] == 1  # the truncated JPEG
    assert "gpu_decode.decoded" not in cpu["beam_counters"]
    assert (gpu["embedded"], gpu["errors"]) == (cpu["embedded"], cpu["errors"])
    footer = pq.read_metadata(tmp_path / "gpu" / "embeddings" / "mixed.parquet").metadata
    assert b'"decoder": "gpu"' in footer[b"mmembed.settings"]


def refusing(marked: bytes, decode: Callable) -> Callable:
    """torchvision's decode_jpeg, refusing ``marked`` as nvJPEG refuses JPEGs that libjpeg-turbo decodes (on the CPU
    the device decoder is libjpeg-turbo itself, so no real JPEG is refused by it and decoded by Pillow)."""

    def decode_jpeg(tensors: list[torch.Tensor], *args: object) -> list[torch.Tensor]:
        if any(bytes(t.numpy()) == marked for t in tensors):
            raise RuntimeError("Error while decoding JPEG images: nvjpegDecode failed: JPEG_NOT_SUPPORTED")
        return decode(tensors, *args)

    return decode_jpeg


def test_a_valid_jpeg_the_device_refuses_is_embedded_through_the_cpu_path(
    mixed_shards: list[str], tmp_path: Path, tiny_config: EncoderConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(1)
    marked = web_photo("astronaut", rng)  # the first JPEG of mixed_shards, byte for byte
    monkeypatch.setattr(gpudecode, "decode_jpeg", refusing(marked, gpudecode.decode_jpeg))
    cpu = embed(mixed_shards, tmp_path / "cpu", tiny_config, DecodeConfig(exact_decode=True))
    gpu = embed(mixed_shards, tmp_path / "gpu", tiny_config, DecodeConfig(decoder="gpu", exact_decode=True))
    assert gpu["beam_counters"]["gpu_decode.cpu_fallback.refused"] == 2  # the marked JPEG and the truncated one
    assert gpu["embedded"] == cpu["embedded"] == 7
    want = read_dir(tmp_path / "cpu" / "embeddings").to_pylist()
    got = read_dir(tmp_path / "gpu" / "embeddings").to_pylist()
    (refused,) = [row for row in got if row["key"] == "a"]
    (same,) = [row for row in want if row["key"] == "a"]
    assert {k: refused[k] for k in (*ROW_FIELDS, "phash")} == {k: same[k] for k in (*ROW_FIELDS, "phash")}
    assert float(np.dot(refused["image_embedding"], same["image_embedding"])) >= 1 - 1e-6  # the exact CPU path


def test_older_outputs_count_as_cpu_decode_and_the_decoder_is_checked_on_resume() -> None:
    source = ShardSource("s.tar", 1, 2.0)
    older = {k: v for k, v in job_settings(DecodeConfig()).items() if k != "decoder"}
    record = ShardRecord(ShardCounts("s", 1, {}, {}), source.fingerprint(), {}, older)
    assert first_difference(record, source, {}, job_settings(DecodeConfig())) is None
    difference = first_difference(record, source, {}, job_settings(DecodeConfig(decoder="gpu")))
    assert difference == 'decoder "cpu", but this run has "gpu" (to continue with the outputs there: --decode cpu)'


# --------------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_is_within_tolerance_of_the_pil_path(
    web_jpegs: list[bytes], preprocessor: ImagePreprocessor, tiny_config: EncoderConfig
) -> None:
    """nvJPEG's IDCT and chroma upsampling are not libjpeg-turbo's, so the bounds are looser than on the CPU."""
    config = replace(tiny_config, device="cuda", precision="fp32")
    encoder = DeviceDecodingEncoder.wrap(OpenClipEncoder.load(config))
    truncated = web_jpegs[1][: len(web_jpegs[1]) // 2]
    batch = encoder.decoder.decode([(data, 1) for data in web_jpegs] + [(truncated, 1)])
    assert batch.decoded[: len(web_jpegs)] == list(range(len(web_jpegs)))  # the truncated one: refused or not
    device = batch.pixels[: len(web_jpegs)].cpu().numpy()
    exact = pil_pixels(preprocessor, web_jpegs, False)
    assert mean_abs(device, exact).max() <= 1.5
    for data, phash in zip(web_jpegs, batch.phashes, strict=False):
        assert hamming(phash, perceptual_hash(decode_image(data, NO_LIMIT))) <= PHASH_BITS_DEFAULT
    answer = encoder.embed_jpegs([(data, 1) for data in web_jpegs])
    assert np.einsum("ij,ij->i", answer.embeddings, encoder.embed_pixels(exact)).min() >= COSINE_DEFAULT


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embed_job_with_gpu_decode_equals_the_cpu_decode_run(
    mixed_shards: list[str], tmp_path: Path, tiny_config: EncoderConfig
) -> None:
    """On CUDA the model lives in a process of its own, shared by the workers: the JPEGs cross to it as bytes."""
    config = replace(tiny_config, device="cuda", precision="fp32")
    cpu = embed(mixed_shards, tmp_path / "cpu", config)
    gpu = embed(mixed_shards, tmp_path / "gpu", config, DecodeConfig(decoder="gpu"))
    assert gpu["beam_counters"]["gpu_decode.decoded"] >= 4 and gpu["embedded"] >= cpu["embedded"]
    want = read_dir(tmp_path / "cpu" / "embeddings").to_pylist()
    got = {row["key"]: row for row in read_dir(tmp_path / "gpu" / "embeddings").to_pylist()}
    for row in want:
        assert {k: got[row["key"]][k] for k in ROW_FIELDS} == {k: row[k] for k in ROW_FIELDS}
        assert float(np.dot(got[row["key"]]["image_embedding"], row["image_embedding"])) >= COSINE_DEFAULT
