"""Decoded sample -> compact model input (uint8 pixels, token ids) and the row fields it will carry."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
from PIL import Image

from mmembed.records import STAGE_PREPROCESS, DecodedSample, EncodedImage, ModelInput, SampleError
from mmembed.schema import utf8_safe


def sample_row(sample: DecodedSample) -> dict:
    """The non-embedding columns of the sample's output row; text that is not valid UTF-8 is escaped."""
    metadata = json.dumps(sample.metadata, ensure_ascii=False) if sample.metadata is not None else None
    return {
        "key": utf8_safe(sample.key),
        "shard": utf8_safe(sample.shard),
        "offset": sample.offset,
        "caption": utf8_safe(sample.caption),
        "metadata": utf8_safe(metadata),
        "url": utf8_safe(sample.url),
        "width": sample.width,
        "height": sample.height,
        "sha256": sample.sha256,
        "phash": sample.phash,
    }


def preprocess_error(sample: DecodedSample, exc: Exception) -> SampleError:
    """The record for a decoded sample whose resize/crop/transform or tokenizing raised."""
    return SampleError(
        sample.shard,
        sample.key,
        sample.image_member,
        STAGE_PREPROCESS,
        "preprocess_failed",
        f"shard {sample.shard}: sample {sample.key}: preprocessing failed ({type(exc).__name__}: {exc})",
    )


def prepare_sample(
    sample: DecodedSample,
    to_pixels: Callable[[Image.Image], np.ndarray],  # not called for an EncodedImage
    tokenize: Callable[[list[str]], np.ndarray],
) -> ModelInput | SampleError:
    """Resize/crop the image and tokenize the caption on CPU, so the encoder gets small arrays; a sample
    without a caption gets no tokens and is embedded image-only. An ``EncodedImage`` (``--decode gpu``) is
    passed on as it is: the model's device decodes, resizes and hashes it."""
    encoded = sample.image if isinstance(sample.image, EncodedImage) else None
    try:
        pixels = to_pixels(sample.image) if encoded is None else None
        tokens = tokenize([sample.caption])[0] if sample.caption is not None else None
        row = sample_row(sample)
    except Exception as exc:  # noqa: BLE001 - any failure here is recorded against this one sample
        return preprocess_error(sample, exc)
    return ModelInput(row=row, pixels=pixels, tokens=tokens, encoded=encoded)
