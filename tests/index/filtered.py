"""Synthetic embed outputs whose samples differ in what ``--where`` and keyword search look at: captions drawn
from a small vocabulary (some samples image-only), json metadata, sizes. Written by the shared writer
(``tests.index.synth.write_embed_dir``); used by the filter tests and ``benchmarks/search_filters.py``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.index.synth import write_embed_dir

WORDS = (
    "red",
    "blue",
    "green",
    "black",
    "white",
    "small",
    "large",
    "old",
    "new",
    "wooden",
    "car",
    "dog",
    "cat",
    "house",
    "tree",
    "boat",
    "bird",
    "horse",
    "bicycle",
    "mountain",
    "river",
    "beach",
    "street",
    "city",
    "garden",
    "kitchen",
    "table",
    "chair",
    "window",
    "flower",
    "running",
    "sleeping",
    "parked",
    "flying",
    "standing",
    "sitting",
    "under",
    "near",
    "with",
    "on",
)
SOURCES = ("flickr", "laion", "coco", "wiki")


def zipf_words(rng: np.random.Generator, vocabulary: Sequence[str], shape: tuple[int, ...]) -> np.ndarray:
    """Indices into ``vocabulary`` drawn with Zipf weights (the i-th word 1/i as likely as the first)."""
    weights = 1.0 / np.arange(1, len(vocabulary) + 1)
    return rng.choice(len(vocabulary), size=shape, p=weights / weights.sum())


def sample_fields(n: int, seed: int, image_only: float = 0.1, vocabulary: Sequence[str] = WORDS) -> dict[str, Any]:
    """Per-sample columns for ``n`` samples: caption (3-8 Zipf-weighted words of ``vocabulary``; None for an
    image-only sample, a fraction ``image_only`` of them), metadata (``src`` one of SOURCES, ``n`` 0..99), width
    and height."""
    rng = np.random.default_rng(seed)
    words = zipf_words(rng, vocabulary, (n, 8))
    lengths = rng.integers(3, 9, n)
    has_text = rng.random(n) >= image_only
    captions = [" ".join(vocabulary[w] for w in words[i, : lengths[i]]) if has_text[i] else None for i in range(n)]
    sources = rng.integers(0, len(SOURCES), n)
    numbers = rng.integers(0, 100, n)
    metadata = [json.dumps({"src": SOURCES[s], "n": int(v)}) for s, v in zip(sources, numbers, strict=True)]
    return {
        "caption": captions,
        "metadata": metadata,
        "width": rng.integers(32, 2048, n).astype(np.int32),
        "height": rng.integers(32, 2048, n).astype(np.int32),
        "has_text": has_text,
    }


def write_filter_dir(
    root: Path,
    image: np.ndarray,
    text: np.ndarray,
    per_shard: int,
    seed: int = 0,
    first_shard: int = 0,
    vocabulary: Sequence[str] = WORDS,
) -> tuple[list[Path], dict[str, Any]]:
    """``<root>/embeddings/shard-NNNNN.parquet`` files of ``per_shard`` rows (a trained model's provenance) with
    ``sample_fields``; returns the paths and the fields of every row, in row-id order."""
    fields = sample_fields(len(image), seed, vocabulary=vocabulary)
    paths = write_embed_dir(
        root,
        image,
        text,
        per_shard,
        first_shard=first_shard,
        has_text=fields["has_text"],
        captions=fields["caption"],
        metadata=fields["metadata"],
        width=fields["width"],
        height=fields["height"],
    )
    return paths, fields
