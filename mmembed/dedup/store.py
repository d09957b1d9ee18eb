"""A row-order copy of the image vectors on local disk (a numpy memmap), written once while streaming the
Parquet files; every later pass (per-cluster gathers, recall, similarity to the kept row) reads it instead of
re-decoding Parquet, and memory stays bounded by what the page cache holds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np


class VectorStore:
    """``count`` x ``dim`` float32 vectors in a ``.npy`` memmap under ``folder``."""

    def __init__(self, folder: str | Path, count: int, dim: int) -> None:
        self.path = Path(folder) / "image_embedding.f32.npy"
        shape = (max(count, 1), dim)  # numpy cannot map an empty file
        self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=shape)
        self.count = count

    def write(self, start: int, vectors: np.ndarray) -> None:
        self.array[start : start + len(vectors)] = vectors

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of sorted rows (sorted keeps the disk reads sequential)."""
        return np.array(self.array[np.asarray(rows, dtype=np.int64)], dtype=np.float32)

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """All vectors in row order, ``size`` rows at a time."""
        for start in range(0, self.count, size):
            yield np.array(self.array[start : start + size], dtype=np.float32)  # a copy, not a view of the map

    def close(self) -> None:
        """Release the mapping so its folder can be removed."""
        self.array.flush()
        del self.array
