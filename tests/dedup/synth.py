"""Synthetic embed outputs for dedup tests: the project's schema with chosen hashes, sizes and similarities."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from mmembed.records import EmbeddedSample
from mmembed.schema import embeddings_schema, embeddings_table, full_provenance
from tests.index.synth import encoder_provenance


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


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
    """``<root>/embeddings/shard-NNNNN.parquet`` files; row r is key ``shard-NNNNN-<r>``; defaults: distinct
    sha256 and random pHashes, 64x48 pixels, similarity = image . text, every row captioned (a row where
    ``has_text`` is False is image-only: no caption, text vector or similarity)."""
    n, dim = image.shape
    text = image if text is None else text
    sha256 = sha256 or [f"{r:064x}" for r in range(n)]
    phash = random_phash(n, seed=12345) if phash is None else np.asarray(phash, dtype=np.uint64)
    width = np.full(n, 64) if width is None else width
    height = np.full(n, 48) if height is None else height
    similarity = np.einsum("ij,ij->i", image, text) if similarity is None else similarity
    has_text = np.ones(n, dtype=bool) if has_text is None else np.asarray(has_text, dtype=bool)
    provenance = full_provenance(encoder_provenance(dim, trained=True), "float32")  # blobs stand for real vectors
    schema = embeddings_schema(dim, "float32", provenance)
    paths = []
    for number, start in enumerate(range(0, n, per_shard)):
        shard = f"shard-{number:05d}"
        samples = [
            EmbeddedSample(
                row={
                    "key": f"{shard}-{r:06d}",
                    "shard": shard,
                    "offset": 512 * r,
                    "caption": f"caption {r}" if has_text[r] else None,
                    "metadata": json.dumps({"row": r}),
                    "url": f"https://example.org/{r}.jpg",
                    "width": int(width[r]),
                    "height": int(height[r]),
                    "sha256": sha256[r],
                    "phash": int(phash[r]).to_bytes(8, "big"),
                },
                image_embedding=image[r],
                text_embedding=text[r] if has_text[r] else None,
                similarity=float(similarity[r]) if has_text[r] else None,
            )
            for r in range(start, min(n, start + per_shard))
        ]
        path = root / "embeddings" / f"{shard}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(embeddings_table(samples, schema), path)
        paths.append(path)
    return paths
