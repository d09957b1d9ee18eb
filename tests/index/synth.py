"""Synthetic embed outputs for tests and benchmarks: clustered unit vectors written as the embed job writes them
(``mmembed.schema.chunk_table``, the project's own schema and provenance), column-wise, so a million rows take
seconds. The one writer of such files: ``tests/dedup/synth.py`` and ``benchmarks/`` build on it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mmembed.records import EmbeddedChunk
from mmembed.schema import chunk_table, embeddings_schema, full_provenance


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


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as float32."""
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def blobs(n: int, dim: int, seed: int, centres: int = 50, spread: float = 0.6) -> np.ndarray:
    """Unit vectors in gaussian blobs around random centres (clustered like real embeddings, not uniform noise)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    points = means[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim) * 2
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class ClusteredVectors:
    """Benchmark-sized ``blobs``: unit vectors around ``centres`` random unit centres, each blob spread in its own
    random ``intrinsic_dim``-d subspace (real embeddings have a low intrinsic dimension; 0: isotropic) plus
    isotropic ``noise``, made block by block (seeded per block) so a million rows never sit in memory at once.
    Pairs inside one blob sit near cosine 0.5 with the defaults."""

    dim: int
    seed: int = 0
    centres: int = 1000
    intrinsic_dim: int = 32
    spread: float = 1.0  # norm of a point's offset from its centre (centre norm 1)
    noise: float = 0.25  # norm of the isotropic noise added to every point

    def model(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Unit centres and, per centre, the basis of its spread (None: isotropic); pass it to every ``block``."""
        rng = np.random.default_rng([self.seed, 0])
        centres = unit(rng.standard_normal((self.centres, self.dim), dtype=np.float32))
        if self.intrinsic_dim <= 0:
            return centres, None
        bases = rng.standard_normal((self.centres, self.intrinsic_dim, self.dim), dtype=np.float32)
        bases /= np.float32(np.sqrt(self.intrinsic_dim * self.dim))  # a standard-normal z maps to norm ~1
        return centres, bases

    def block(self, model: tuple[np.ndarray, np.ndarray | None], rows: int, rng: np.random.Generator) -> np.ndarray:
        """``rows`` unit vectors drawn with ``rng`` (``np.random.default_rng([seed, 1, block])`` by convention)."""
        centres, bases = model
        labels = rng.integers(0, len(centres), rows)
        points = centres[labels]
        if bases is None:
            points += np.float32(self.spread / np.sqrt(self.dim)) * rng.standard_normal((rows, self.dim), np.float32)
        else:
            z = rng.standard_normal((rows, self.intrinsic_dim), dtype=np.float32) * np.float32(self.spread)
            order = np.argsort(labels, kind="stable")
            for group in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1):
                points[group] += z[group] @ bases[labels[group[0]]]
        points += np.float32(self.noise / np.sqrt(self.dim)) * rng.standard_normal((rows, self.dim), np.float32)
        return unit(points)


def write_shard(
    path: Path,
    shard: str,
    image: np.ndarray,
    text: np.ndarray | None,
    provenance: dict[str, Any],
    dtype: str = "float32",
    has_text: np.ndarray | None = None,
    *,
    first_row: int = 0,
    sha256: Sequence[str] | None = None,
    phash: np.ndarray | None = None,
    width: np.ndarray | None = None,
    height: np.ndarray | None = None,
    similarity: np.ndarray | None = None,
    captions: Sequence[str | None] | None = None,
    metadata: Sequence[str | None] | None = None,
    text_fields: bool = True,
) -> Path:
    """One ``embeddings/<shard>.parquet`` file as the embed job writes it (atomically: temporary name, rename).

    Row ``i`` is sample number ``r = first_row + i``: key ``<shard>-<r:06d>``, offset ``512 + 1024 r``; defaults:
    text = image, sha256 ``r`` in hex, pHash ``r``, 64 x 48 pixels, similarity = image . text; with
    ``text_fields`` a caption, a url and json metadata naming the url (or the ``captions`` and ``metadata``
    given), else those three null (bare vectors).
    A row where ``has_text`` (default: every row) is False is an image-only sample: no caption, no text vector,
    no similarity."""
    n, dim = image.shape
    text = image if text is None else text
    rows = np.arange(first_row, first_row + n)
    has_text = np.ones(n, dtype=bool) if has_text is None else np.asarray(has_text, dtype=bool)
    sha256 = [f"{r:064x}" for r in rows] if sha256 is None else sha256
    phash = rows.astype(np.uint64) if phash is None else np.asarray(phash, dtype=np.uint64)
    width = np.full(n, 64) if width is None else np.asarray(width)
    height = np.full(n, 48) if height is None else np.asarray(height)
    similarity = np.einsum("ij,ij->i", image, text) if similarity is None else np.asarray(similarity)
    urls = [f"https://example.org/{shard}/{r}.jpg" if text_fields else None for r in rows]
    if captions is None:
        captions = [f"caption {shard} {r}" if text_fields and has_text[i] else None for i, r in enumerate(rows)]
    if metadata is None:
        metadata = [json.dumps({"url": url}) if url else None for url in urls]
    samples = [
        {
            "key": f"{shard}-{r:06d}",
            "shard": shard,
            "offset": 512 + 1024 * int(r),
            "caption": captions[i],
            "metadata": metadata[i],
            "url": urls[i],
            "width": int(width[i]),
            "height": int(height[i]),
            "sha256": sha256[i],
            "phash": int(phash[i]).to_bytes(8, "big"),
        }
        for i, r in enumerate(rows)
    ]
    chunk = EmbeddedChunk(shard, samples, image, text, similarity.astype(np.float32), has_text)
    schema = embeddings_schema(dim, dtype, full_provenance(provenance, dtype))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.tmp")
    pq.write_table(chunk_table(chunk, schema), partial)
    os.replace(partial, path)
    return path


def write_embed_dir(
    root: Path,
    image: np.ndarray,
    text: np.ndarray | None,
    per_shard: int,
    provenance: dict[str, Any] | None = None,
    dtype: str = "float32",
    first_shard: int = 0,
    has_text: np.ndarray | None = None,
    *,
    global_rows: bool = False,
    sha256: Sequence[str] | None = None,
    phash: np.ndarray | None = None,
    width: np.ndarray | None = None,
    height: np.ndarray | None = None,
    similarity: np.ndarray | None = None,
    captions: Sequence[str | None] | None = None,
    metadata: Sequence[str | None] | None = None,
) -> list[Path]:
    """Split rows into ``<root>/embeddings/shard-NNNNN.parquet`` files of ``per_shard`` rows each (by default
    recorded as a trained model's: the blobs stand for meaningful vectors). Keys number rows within their file,
    or across the whole set with ``global_rows``; the per-row columns (one value per row of ``image``) and their
    defaults as in ``write_shard``."""
    provenance = provenance or encoder_provenance(image.shape[1], trained=True)
    text = image if text is None else text
    has_text = np.ones(len(image), dtype=bool) if has_text is None else np.asarray(has_text, dtype=bool)
    columns = {"sha256": sha256, "phash": phash, "width": width, "height": height, "similarity": similarity}
    columns |= {"captions": captions, "metadata": metadata}
    paths = []
    for n, start in enumerate(range(0, len(image), per_shard), start=first_shard):
        rows = slice(start, start + per_shard)
        shard = f"shard-{n:05d}"
        path = root / "embeddings" / f"{shard}.parquet"
        given = {name: None if values is None else values[rows] for name, values in columns.items()}
        given["first_row"] = start if global_rows else 0
        paths.append(write_shard(path, shard, image[rows], text[rows], provenance, dtype, has_text[rows], **given))
    return paths


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Brute-force inner-product top-k in numpy (independent of faiss)."""
    scores = queries @ base.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth, strict=True)]))
