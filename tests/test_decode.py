"""Decoding member bytes: every image mode to RGB, and a precise error code for each bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mmembed.config import DecodeConfig
from mmembed.decode import DecodeError, decode_caption, decode_image, decode_metadata, decode_sample, perceptual_hash
from mmembed.records import DecodedSample, RawSample, SampleError
from tests.tarmaker import image_bytes, jpeg_bytes

LIMIT = DecodeConfig().max_image_pixels


def photo(mode: str = "RGB") -> Image.Image:
    image = Image.open(__import__("io").BytesIO(jpeg_bytes("chelsea", size=64))).convert("RGB")
    return image.convert(mode)


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("RGB", "WEBP")],
)
def test_every_mode_and_format_decodes_to_rgb(mode: str, fmt: str) -> None:
    source = photo(mode)
    image = decode_image(image_bytes(source, fmt), LIMIT)
    assert image.mode == "RGB" and image.size == source.size


def test_16bit_grayscale_png_becomes_8bit_rgb() -> None:
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    image = decode_image(image_bytes(Image.fromarray(ramp), "PNG"), LIMIT)
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.max() > 200 and pixels.min() == 0


def test_transparent_pixels_become_white_not_black() -> None:
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image = decode_image(image_bytes(rgba, "PNG"), LIMIT)
    assert np.asarray(image).min() == 255


def test_exif_orientation_is_applied() -> None:
    source = photo()  # landscape-or-square source; rotate via EXIF tag 6 (90 degrees clockwise)
    wide = source.resize((80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(image_bytes(wide, "JPEG", exif=exif), LIMIT)
    assert image.size == (40, 80)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (b"hello, I am a caption saved as .jpg\n", "bad_image"),
        (jpeg_bytes()[:400], "bad_image"),  # truncated JPEG
    ],
    ids=["zero-bytes", "text-named-jpg", "truncated-jpeg"],
)
def test_undecodable_images_have_codes(data: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_image(data, LIMIT)
    assert info.value.code == code


def test_decompression_bomb_is_refused_before_decoding() -> None:
    big = image_bytes(Image.new("L", (4000, 3000)), "PNG")  # 12 Mpx, compresses to a few KB
    with pytest.raises(DecodeError) as info:
        decode_image(big, max_pixels=1_000_000)
    assert info.value.code == "image_too_large" and "12,000,000" in str(info.value)


def test_caption_must_be_utf8() -> None:
    assert decode_caption("  un café \n".encode()) == "un café"
    with pytest.raises(DecodeError) as info:
        decode_caption("café".encode("latin-1"))
    assert info.value.code == "bad_caption_encoding" and "UTF-8" in str(info.value)


@pytest.mark.parametrize("data", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_metadata_must_be_a_json_object(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_metadata(data)
    assert info.value.code == "bad_metadata"


def raw(**members: bytes) -> RawSample:
    return RawSample("shard-3", "k9", members=dict(members), member_offsets={k: 512 for k in members})


def test_decode_sample_fills_row_fields() -> None:
    data = jpeg_bytes()
    decoded = decode_sample(raw(jpg=data, txt=b"an astronaut", json=b'{"url": "http://x/y.jpg"}'), DecodeConfig())
    assert isinstance(decoded, DecodedSample)
    assert (decoded.caption, decoded.url, decoded.offset, decoded.image_member) == (
        "an astronaut",
        "http://x/y.jpg",
        512,
        "k9.jpg",
    )
    assert len(decoded.sha256) == 64 and decoded.width == decoded.image.width


@pytest.mark.parametrize(
    ("members", "code", "member"),
    [
        ({"jpg": b"GIF89a broken"}, "no_caption", "k9.txt"),
        ({"jpg": jpeg_bytes()[:300], "txt": b"x"}, "bad_image", "k9.jpg"),
        ({"jpg": jpeg_bytes(), "txt": b"\xff\xff"}, "bad_caption_encoding", "k9.txt"),
        ({"jpg": jpeg_bytes(), "txt": b"ok", "json": b"{"}, "bad_metadata", "k9.json"),
    ],
)
def test_decode_sample_errors_name_shard_member_and_fix(members: dict, code: str, member: str) -> None:
    error = decode_sample(raw(**members), DecodeConfig())
    assert isinstance(error, SampleError)
    assert (error.code, error.member, error.stage) == (code, member, "decode")
    assert "shard shard-3" in error.reason and member in error.reason and "fix:" in error.reason


def test_custom_caption_key() -> None:
    decoded = decode_sample(raw(jpg=jpeg_bytes(), caption=b"from .caption"), DecodeConfig(caption_key="caption"))
    assert isinstance(decoded, DecodedSample) and decoded.caption == "from .caption"


def hamming(a: bytes, b: bytes) -> int:
    return int(np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


def test_perceptual_hash_survives_reencode_and_resize_but_not_another_photo() -> None:
    original = decode_image(jpeg_bytes("astronaut", size=256, quality=95), LIMIT)
    reencoded = decode_image(image_bytes(original, "JPEG", quality=30), LIMIT)
    resized = original.resize((128, 128))
    other = decode_image(jpeg_bytes("coffee", size=256), LIMIT)
    base = perceptual_hash(original)
    assert len(base) == 8
    assert hamming(base, perceptual_hash(reencoded)) <= 4 and hamming(base, perceptual_hash(resized)) <= 4
    assert hamming(base, perceptual_hash(other)) >= 16


def im_file(size: bytes) -> bytes:
    """An IFUNC IM file (a format Pillow detects from content) whose header states ``size``."""
    header = b"Image type: RGB image\r\nImage size (x*y): " + size + b"\r\n\x1a"
    return header.ljust(512, b"\0") + bytes(300)


@pytest.mark.parametrize(
    ("size", "raised"),
    [(b"10.5*10", "TypeError"), (b"1*2*3", "ValueError")],
    ids=["fractional-size", "three-numbers"],
)
def test_image_that_makes_pillow_raise_anything_is_bad_image(size: bytes, raised: str) -> None:
    error = decode_sample(raw(jpg=im_file(size), txt=b"x"), DecodeConfig())
    assert isinstance(error, SampleError)
    assert (error.code, error.stage, error.member) == ("bad_image", "decode", "k9.jpg")
    assert error.reason.startswith("shard shard-3: member k9.jpg: not a decodable image (" + raised + ": ")
    assert "fix: re-export the image" in error.reason


@pytest.mark.parametrize(
    ("data", "cause", "fix"),
    [
        (b'{"a": "\\ud800"}', "\\ud800, a lone surrogate", "fix: remove it"),
        (b'{"n": ' + b"7" * 5000 + b"}", "Exceeds the limit", "fix: store very long numbers as strings"),
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "nested deeper", "fix: flatten it"),
    ],
    ids=["lone-surrogate", "5000-digit-int", "nested-50000-deep"],
)
def test_metadata_python_cannot_store_is_bad_metadata(data: bytes, cause: str, fix: str) -> None:
    error = decode_sample(raw(jpg=jpeg_bytes(), txt=b"ok", json=data), DecodeConfig())
    assert isinstance(error, SampleError)
    assert (error.code, error.member) == ("bad_metadata", "k9.json")
    assert error.reason.startswith("shard shard-3: member k9.json: ") and cause in error.reason and fix in error.reason


def test_image_over_the_configured_limit_names_the_fix() -> None:
    png = image_bytes(Image.new("RGB", (100, 100)), "PNG")
    error = decode_sample(raw(png=png, txt=b"x"), DecodeConfig(max_image_pixels=5000))
    assert isinstance(error, SampleError) and error.code == "image_too_large"
    assert "shard shard-3: member k9.png: image is 100x100 = 10,000 pixels, over the limit of 5,000" in error.reason
    assert "raise --max-image-pixels" in error.reason


def test_raised_max_image_pixels_beats_pillows_own_limit() -> None:
    """Pillow refuses over 89,478,485 pixels on its own; --max-image-pixels above that must let the image through."""
    side = 9500  # 90.25 Mpx, a 30 KB one-bit PNG; decoding it to RGB takes about 270 MB, once
    big = image_bytes(Image.new("1", (side, side), 1), "PNG")
    assert side * side > LIMIT
    image = decode_image(big, max_pixels=100_000_000)
    assert image.size == (side, side) and image.getpixel((side - 1, side - 1)) == (255, 255, 255)


def big_photo(width: int = 1000, height: int = 750) -> Image.Image:
    """A real photo (scikit-image's chelsea) upscaled to web size."""
    return Image.open(__import__("io").BytesIO(jpeg_bytes("chelsea", size=300))).convert("RGB").resize((width, height))


def test_a_large_jpeg_decodes_at_reduced_scale_never_below_the_model_input() -> None:
    data = image_bytes(big_photo(), "JPEG")
    reduced = decode_image(data, LIMIT, reduce_to=224)
    assert reduced.size == (500, 375)  # libjpeg scales by 1/2, 1/4 or 1/8: 1/4 (250 x 188) would go below 224
    assert decode_image(data, LIMIT).size == (1000, 750)  # without reduce_to: exact, as before
    small = image_bytes(big_photo(400, 300), "JPEG")  # under twice the input size: decoded in full
    assert decode_image(small, LIMIT, reduce_to=224).size == (400, 300)
    png = image_bytes(big_photo(), "PNG")  # only JPEG has DCT scaling
    assert decode_image(png, LIMIT, reduce_to=224).size == (1000, 750)


def test_reduced_scale_decode_changes_the_model_input_pixels_only_slightly() -> None:
    from mmembed.encoders.openclip import ImagePreprocessor, resolve_preprocess_cfg
    from tests.conftest import TINY

    preprocessor = ImagePreprocessor(resolve_preprocess_cfg(TINY))
    data = image_bytes(big_photo(), "JPEG")
    exact = preprocessor.to_pixels(decode_image(data, LIMIT)).astype(float)
    reduced = preprocessor.to_pixels(decode_image(data, LIMIT, reduce_to=preprocessor.input_side)).astype(float)
    assert exact.shape == reduced.shape
    assert np.abs(exact - reduced).mean() < 2.0  # of 255: the resize's own smoothing hides most of the DCT scaling


def test_decode_sample_records_the_full_upright_size_after_a_reduced_decode() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the upright image is 750 x 1000
    data = image_bytes(big_photo(), "JPEG", exif=exif)
    decoded = decode_sample(raw(jpg=data, txt=b"a cat"), DecodeConfig(), reduce_to=224)
    assert isinstance(decoded, DecodedSample)
    assert (decoded.width, decoded.height) == (750, 1000) and decoded.image.size[0] < 750
