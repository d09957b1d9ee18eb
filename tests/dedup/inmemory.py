"""The semantic method end to end on vectors in memory, for tests and ``benchmarks/dedup_eval.py``: the same
library pieces ``mmembed.dedup.run`` runs over embeddings files (sample, k-means, assign, per cluster)."""

from __future__ import annotations

import numpy as np

from mmembed.dedup.config import SemanticConfig
from mmembed.dedup.links import Links
from mmembed.dedup.semantic import (
    SemanticDuplicates,
    assign,
    auto_clusters,
    deduplicate_clusters,
    train_centroids,
)
from mmembed.index.evaluate import sample_rows


def find_semantic_duplicates(
    vectors: np.ndarray, config: SemanticConfig, identical: Links | None = None
) -> SemanticDuplicates:
    """The whole semantic method for unit vectors in memory: k-means on a seeded sample, assign, per cluster."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    count = len(vectors)
    k = min(config.n_clusters or auto_clusters(count), max(count, 1))
    sample = sample_rows(count, min(count, max(config.sample_size, k)), config.seed)
    centroids = train_centroids(vectors[sample], k, config.seed, config.kmeans_iterations, config.device)
    top, _ = assign(vectors, centroids, config.device)
    return deduplicate_clusters(lambda rows: vectors[rows], top, centroids, config, identical)
