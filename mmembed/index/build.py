"""Build one faiss index: pick the device, train on a seeded sample, add vectors in batches."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import faiss
import numpy as np

from mmembed.config import ConfigError

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when faiss sees a GPU else 'cpu'; 'cuda' without one fails fast (no silent fallback)."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "cuda" and gpus == 0:
        raise ConfigError(
            "--device cuda was requested but faiss sees no GPU (faiss.get_num_gpus() == 0; is faiss-cpu installed?): "
            "install faiss-gpu (pip install 'mmembed[gpu]') on a CUDA machine, or pass --device cpu"
        )
    resolved = "cuda" if device in ("cuda", "auto") and gpus > 0 else "cpu"
    log.info("faiss index build on %s (requested %s, %d GPU(s) visible)", resolved, device, gpus)
    return resolved


def new_index(key: str, dim: int) -> faiss.Index:
    """An empty inner-product index from a factory string; a bad key is a ConfigError naming it."""
    try:
        return faiss.index_factory(dim, key, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ConfigError(f"faiss cannot build index key {key!r} for dim {dim}: {exc}") from exc


def train(index: faiss.Index, sample: np.ndarray, device: str = "cpu") -> None:
    """Train on a sample; on GPU the IVF k-means runs on a GPU flat index (index stays a CPU index). A sample
    faiss cannot train on (fewer vectors than centroids) is a ConfigError saying how many it had."""
    if index.is_trained:
        return
    if device == "cuda":
        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError:
            ivf = None
        if ivf is not None:
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(ivf.d))
            log.info("IVF k-means (%d lists) on GPU", ivf.nlist)
    try:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"faiss cannot train this index on {len(sample):,} vectors ({reason})") from exc


def add_batches(index: faiss.Index, batches: Iterable[np.ndarray]) -> int:
    """Add batches in order (faiss labels continue from ``index.ntotal``, so row ids stay stable); returns added."""
    before = index.ntotal
    for block in batches:
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index.ntotal - before
