"""A short training run on real digits must beat chance by far: the learned space puts captions near their images."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mmembed.encoders.openclip import CaptionTokenizer, OpenClipEncoder
from mmembed.labelled import labelled_samples, load
from mmembed.makeshards import ShardSpec, write_shards
from mmembed.train import train
from tests.train.conftest import SMALL, small_run


def precision_at_10(encoder: OpenClipEncoder, tokenizer: CaptionTokenizer) -> float:
    """Mean over the 10 digit classes of the share of the 10 test images nearest "a handwritten <class>"."""
    test = load("digits", "test")
    pixels = np.stack([encoder.preprocessor.to_pixels(img) for img in map(_to_rgb, test.images)])
    images = encoder.embed_pixels(pixels)
    texts = encoder.embed_tokens(tokenizer([f"a handwritten {name}" for name in test.classes]))
    top = np.argsort(-(texts @ images.T), axis=1)[:, :10]
    return float(np.mean(test.labels[top] == np.arange(10)[:, None]))


def _to_rgb(pixels: np.ndarray):
    from PIL import Image

    return Image.fromarray(pixels).convert("RGB")


@pytest.fixture(scope="module")
def all_digit_shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("digits-train")
    return write_shards(labelled_samples(load("digits", "train")), ShardSpec(out=str(out), samples_per_shard=500))[
        "shards"
    ]


def test_trained_model_retrieves_the_right_digits(all_digit_shards: list[str], tmp_path: Path) -> None:
    tokenizer = CaptionTokenizer(SMALL)
    before = precision_at_10(OpenClipEncoder.load(SMALL), tokenizer)
    config = small_run(
        all_digit_shards, tmp_path / "run", epochs=6, batch_size=64, warmup_steps=30, shuffle_buffer=2000
    )
    train(config)
    trained = replace(SMALL, checkpoint=str(tmp_path / "run" / "model.pt"), random_init=False)
    after = precision_at_10(OpenClipEncoder.load(trained), tokenizer)
    print(f"text -> image precision@10 on the digits' test split: random init {before:.2f}, trained {after:.2f}")
    assert before < 0.4 and after >= 0.8
