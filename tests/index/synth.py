"""Synthetic embed outputs for index tests: clustered unit vectors written with the project's own schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mmembed.records import EmbeddedSample
from mmembed.schema import embeddings_schema, embeddings_table, full_provenance


def encoder_provenance(dim: int, model: str = "mmembed-tiny", seed: int = 0, trained: bool = False) -> dict[str, Any]:
    """What ``mmembed.encoders.openclip.provenance`` returns for a random-init model (or, ``trained``, a model
    with weights from a checkpoint: synthetic vectors that stand for meaningful ones), without loading one."""
    return {
        "model": model,
        "pretrained": None,
        "checkpoint": None,
        "checkpoint_sha256": "0" * 64 if trained else None,
        "weights": f"checkpoint-sha256:{'0' * 64}" if trained else "random-init",
        "init_seed": None if trained else seed,
        "dim": dim,
        "preprocessing": {"size": [32, 32], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
    }


def blobs(n: int, dim: int, seed: int, centres: int = 50, spread: float = 0.6) -> np.ndarray:
    """Unit vectors in gaussian blobs around random centres (clustered like real embeddings, not uniform noise)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    points = means[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim) * 2
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def write_shard(
    path: Path,
    shard: str,
    image: np.ndarray,
    text: np.ndarray,
    provenance: dict[str, Any],
    dtype: str = "float32",
    has_text: np.ndarray | None = None,
) -> Path:
    """One ``embeddings/<shard>.parquet`` file as the embed job writes it; a row where ``has_text`` (default:
    every row) is False is an image-only sample: no caption, no text vector, no similarity."""
    has_text = np.ones(len(image), dtype=bool) if has_text is None else np.asarray(has_text, dtype=bool)
    samples = [
        EmbeddedSample(
            row={
                "key": f"{shard}-{i:06d}",
                "shard": shard,
                "offset": 512 + 1024 * i,
                "caption": f"caption {shard} {i}" if has_text[i] else None,
                "metadata": json.dumps({"url": f"https://example.org/{shard}/{i}.jpg"}),
                "url": f"https://example.org/{shard}/{i}.jpg",
                "width": 64,
                "height": 48,
                "sha256": f"{i:064x}",
                "phash": i.to_bytes(8, "big"),
            },
            image_embedding=image[i],
            text_embedding=text[i] if has_text[i] else None,
            similarity=float(image[i] @ text[i]) if has_text[i] else None,
        )
        for i in range(len(image))
    ]
    schema = embeddings_schema(image.shape[1], dtype, full_provenance(provenance, dtype))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(embeddings_table(samples, schema), path)
    return path


def write_embed_dir(
    root: Path,
    image: np.ndarray,
    text: np.ndarray,
    per_shard: int,
    provenance: dict[str, Any] | None = None,
    dtype: str = "float32",
    first_shard: int = 0,
    has_text: np.ndarray | None = None,
) -> list[Path]:
    """Split rows into ``<root>/embeddings/shard-NNNNN.parquet`` files of ``per_shard`` rows each (by default
    recorded as a trained model's: the blobs stand for meaningful vectors); ``has_text`` as in ``write_shard``."""
    provenance = provenance or encoder_provenance(image.shape[1], trained=True)
    has_text = np.ones(len(image), dtype=bool) if has_text is None else np.asarray(has_text, dtype=bool)
    paths = []
    for n, start in enumerate(range(0, len(image), per_shard), start=first_shard):
        rows = slice(start, start + per_shard)
        shard = f"shard-{n:05d}"
        path = root / "embeddings" / f"{shard}.parquet"
        paths.append(write_shard(path, shard, image[rows], text[rows], provenance, dtype, has_text[rows]))
    return paths


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force inner-product top-k in numpy (independent of faiss)."""
    scores = queries @ base.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))
