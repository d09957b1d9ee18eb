"""Synthetic embed outputs for dedup tests: ``tests/index/synth.py``'s writer with chosen hashes, sizes and
similarities, and vectors at a chosen cosine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.index.synth import unit, write_embed_dir


def near_copy(vector: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly ``cosine`` from the unit ``vector``, in a random direction."""
    noise = rng.normal(size=vector.shape)
    noise -= (noise @ vector) * vector
    noise /= np.linalg.norm(noise)
    return unit(cosine * vector + np.sqrt(1 - cosine**2) * noise)


def random_phash(n: int, seed: int) -> np.ndarray:
    """Random 64-bit hashes (uint64): any two sit ~32 bits apart, none within 8 (p ~ 3e-10 a pair)."""
    return np.random.default_rng(seed).integers(0, 2**64, size=n, dtype=np.uint64)


def write_dedup_dir(
    root: Path,
    image: np.ndarray,
    *,
    text: np.ndarray | None = None,
    sha256: list[str] | None = None,
    phash: np.ndarray | None = None,
    width: np.ndarray | None = None,
    height: np.ndarray | None = None,
    similarity: np.ndarray | None = None,
    has_text: np.ndarray | None = None,
    per_shard: int = 100,
) -> list[Path]:
    """``<root>/embeddings/shard-NNNNN.parquet`` files; row r is key ``shard-NNNNN-<r>`` (numbered across the
    set); defaults: distinct sha256 and random pHashes, 64x48 pixels, similarity = image . text, every row
    captioned (a row where ``has_text`` is False is image-only: no caption, text vector or similarity)."""
    phash = random_phash(len(image), seed=12345) if phash is None else phash
    return write_embed_dir(
        root,
        image,
        text,
        per_shard,
        has_text=has_text,
        global_rows=True,
        sha256=sha256,
        phash=phash,
        width=width,
        height=height,
        similarity=similarity,
    )
