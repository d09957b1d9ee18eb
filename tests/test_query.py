"""Query encoding from recorded provenance, refusal of a different model, and composed queries."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mmembed.config import ConfigError, EncoderConfig
from mmembed.encoders.openclip import CaptionTokenizer, OpenClipEncoder, provenance
from mmembed.query import QueryEncoder, fuse
from mmembed.schema import full_provenance
from tests.tarmaker import jpeg_bytes


def test_query_encoder_reproduces_the_recorded_model(tiny_config: EncoderConfig) -> None:
    data_prov = full_provenance(provenance(tiny_config), "float16")
    queries = QueryEncoder.for_provenance(data_prov, "index x", device="cpu")
    reference = OpenClipEncoder.load(tiny_config)
    want = reference.embed_tokens(CaptionTokenizer(tiny_config)(["a cat", "a rocket"]))
    np.testing.assert_allclose(queries.encode_texts(["a cat", "a rocket"]), want, atol=1e-6)
    images = queries.encode_images([(jpeg_bytes("chelsea"), "chelsea.jpg"), (jpeg_bytes("rocket"), "rocket.jpg")])
    assert images.shape == (2, 64) and np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
    assert queries.encode_texts([]).shape == (0, 64)


def test_query_encoder_batches_like_one_call(tiny_config: EncoderConfig) -> None:
    texts = [f"photo number {i}" for i in range(10)]
    small = QueryEncoder(replace(tiny_config, batch_size=3)).encode_texts(texts)
    np.testing.assert_allclose(small, QueryEncoder(tiny_config).encode_texts(texts), atol=1e-5)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        (EncoderConfig(model="mmembed-tiny", random_init=True, seed=1, device="cpu"), "init_seed"),
        (EncoderConfig(model="ViT-B-32"), "model"),
    ],
)
def test_a_different_query_model_is_refused(tiny_config: EncoderConfig, override: EncoderConfig, field: str) -> None:
    with pytest.raises(ConfigError, match=f"index y was embedded by a different model.*{field}"):
        QueryEncoder.for_provenance(full_provenance(provenance(tiny_config), "float32"), "index y", override=override)


def test_bad_query_image_names_the_file(tiny_config: EncoderConfig, tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(ValueError, match=f"query {path}: not a decodable image"):
        QueryEncoder(tiny_config).encode_images([(path.read_bytes(), str(path))])


def test_fuse_weights_and_renormalises() -> None:
    image, text = np.array([[1.0, 0.0]], np.float32), np.array([[0.0, 1.0]], np.float32)
    np.testing.assert_allclose(fuse(image, text, 0.0), image)
    np.testing.assert_allclose(fuse(image, text, 0.5), [[2**-0.5, 2**-0.5]], atol=1e-6)
    with pytest.raises(ConfigError):
        fuse(image, text, 1.5)
