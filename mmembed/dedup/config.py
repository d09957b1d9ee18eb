"""DedupConfig: every option of a dedup run as one validated, frozen value; each field declares its command-line
option too (``mmembed.options``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from mmembed.config import DEVICES, RANDOM_INIT_WEIGHTS, ConfigError
from mmembed.options import option

log = logging.getLogger(__name__)

METHODS = ("exact", "perceptual", "semantic")
KEEP_POLICIES = ("similarity", "resolution", "first", "semdedup-hard", "semdedup-easy")
PHASH_BITS = 64
# pHash bits two images may differ in and still be near-duplicates. On scikit-image's photos a JPEG re-encode
# at quality 30 or a 50% resize moves 0-4 bits and a crop of 2% per side 0-8, while the 171 pairs of distinct
# photos sit 20-34 bits apart; 8 keeps a margin both ways (random 64-bit hashes collide at <= 8 with p ~ 3e-10).
DEFAULT_PHASH_THRESHOLD = 8
# SemDeDup (arXiv 2303.09540) tunes eps to a target pruning fraction and publishes no universal value;
# cosine > 0.95 between CLIP image embeddings is a conservative "same picture" level. Tune it with the histogram.
DEFAULT_EPS = 0.05


@dataclass(frozen=True)
class SemanticConfig:
    """The semantic method's knobs (see DedupConfig); ``device`` 'cuda' runs k-means and searches on GPU."""

    eps: float = DEFAULT_EPS
    n_clusters: int | None = None
    max_cluster_size: int = 10_000
    sample_size: int = 200_000
    kmeans_iterations: int = 20
    block_size: int = 2048
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 0 < self.eps < 1:
            raise ConfigError(f"eps must be in (0, 1) (duplicates have cosine > 1 - eps), got {self.eps}")
        if self.n_clusters is not None and self.n_clusters < 1:
            raise ConfigError(f"n_clusters must be >= 1 or None for ~sqrt(rows), got {self.n_clusters}")
        if self.max_cluster_size < 2:
            raise ConfigError(f"max_cluster_size must be >= 2, got {self.max_cluster_size}")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {DEVICES}")
        for name in ("sample_size", "kmeans_iterations", "block_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def threshold(self) -> float:
        """The cosine a semantic duplicate pair must exceed."""
        return 1.0 - self.eps


@dataclass(frozen=True)
class DedupConfig:
    """Find duplicate groups in one embed output dir and write the keep list into ``out_dir`` (each a local path
    or an object-store URL such as ``s3://bucket/emb``; ``work_dir`` too for the Beam job, which keeps its
    intermediate results there, while the single-machine run needs a local one for its vector memmap).

    methods: any of 'exact' (same sha256 of the image bytes), 'perceptual' (pHash within ``phash_threshold``
    bits), 'semantic' (SemDeDup: image-embedding cosine > 1 - ``eps`` inside k-means clusters).
    keep: which member of a group survives: 'resolution' (most pixels, the default), 'similarity' (best
    image-text cosine; an image-only sample, whose similarity is null, ranks below every captioned one),
    'first' (smallest (shard, key)), 'semdedup-hard' / 'semdedup-easy' (farthest from / closest to its
    cluster centroid; needs 'semantic'). Ties go to the smallest (shard, key).
    n_clusters: k-means clusters, None for ~sqrt(rows); clusters above ``max_cluster_size`` are split again.
    sample_size: k-means trains on this many seeded rows. recall_queries: rows whose exact all-pairs
    neighbours measure what clustering misses (0 skips it). block_size: tile side of in-cluster comparisons.
    """

    embeddings_dir: str = option(flag="--embeddings", help="the embed job's --out dir (holds embeddings/*.parquet)")
    out_dir: str = option(flag="--out", help="where duplicates.parquet, keep.parquet, summary.json go")
    methods: tuple[str, ...] | None = option(
        None,
        split=True,
        metavar="METHOD",
        help="exact, perceptual and/or semantic, as words or a comma list (default: all three; exact,perceptual "
        "for embeddings of a model with random weights)",
    )
    # the largest image: the original over a crop or thumbnail
    keep: str = option("resolution", choices=KEEP_POLICIES, help="which member of a group survives")
    phash_threshold: int = option(DEFAULT_PHASH_THRESHOLD, help="max pHash bit distance of near-duplicates")
    eps: float = option(DEFAULT_EPS, help="semantic duplicates: image-embedding cosine > 1 - eps")
    n_clusters: int | None = option(None, help="k-means clusters (default ~sqrt(rows))")
    max_cluster_size: int = option(10_000, help="larger clusters are split again")
    sample_size: int = option(200_000, help="rows k-means trains on (a seeded sample)")
    kmeans_iterations: int = option(20, help="k-means iterations")
    recall_queries: int = option(1000, help="rows of the pair-recall check (0: off)")
    block_size: int = option(2048, help="in-cluster comparison tile")
    batch_size: int = option(65_536, help="rows per Parquet read batch")
    seed: int = option(0, help="seeds the k-means sample and the recall rows")
    device: str = option("auto", choices=DEVICES, help="faiss-gpu k-means when available")
    work_dir: str | None = option(
        None, help="dir or URL every worker reaches, for the job's intermediate results (default: under --out)"
    )
    overwrite: bool = option(False, help="replace existing outputs")
    allow_random_weights: bool = option(
        False, help="run semantic dedup on embeddings of a random-weight model (smoke tests only)"
    )

    def __post_init__(self) -> None:
        if self.methods is not None:
            object.__setattr__(self, "methods", tuple(self.methods))  # YAML and CLI give lists
        if not self.embeddings_dir or not self.out_dir:
            raise ConfigError("give both embeddings_dir (an embed job's --out) and out_dir (where dedup results go)")
        methods = METHODS if self.methods is None else self.methods
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown or len(set(methods)) != len(methods):
            raise ConfigError(f"--methods {' '.join(methods)}: give distinct methods from {', '.join(METHODS)}")
        if self.keep not in KEEP_POLICIES:
            raise ConfigError(f"keep policy {self.keep!r} is not one of {KEEP_POLICIES}")
        if self.keep.startswith("semdedup") and "semantic" not in methods:
            raise ConfigError(
                f"--keep {self.keep} ranks by distance to a k-means centroid: add 'semantic' to --methods"
            )
        if not 0 <= self.phash_threshold < PHASH_BITS // 2:
            raise ConfigError(f"phash_threshold must be in [0, {PHASH_BITS // 2}) bits, got {self.phash_threshold}")
        self.semantic(self.device)  # validates the semantic fields
        if self.recall_queries < 0:
            raise ConfigError(f"recall_queries must be >= 0, got {self.recall_queries}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def for_embeddings(self, provenance: dict[str, Any]) -> DedupConfig:
        """This config with its methods settled for embeddings of ``provenance``: semantic dedup of a model with
        random weights would group unrelated images, so it is refused when asked for, and left out (said in a
        warning) when the methods were not given, unless ``allow_random_weights``."""
        random = provenance.get("weights") == RANDOM_INIT_WEIGHTS and not self.allow_random_weights
        if self.methods is None:
            if random:
                log.warning(
                    "the embeddings come from a model with random weights: semantic dedup would group unrelated "
                    "images, so only exact,perceptual run (--methods ... --allow-random-weights forces it)"
                )
            return replace(self, methods=("exact", "perceptual") if random else METHODS)
        if random and "semantic" in self.methods:
            raise ConfigError(
                "semantic dedup on embeddings of a model with random weights (--random-init) would group unrelated "
                "images; fix: embed with a real model, leave 'semantic' out of --methods, or pass "
                "--allow-random-weights for a smoke test"
            )
        return self

    def semantic(self, device: str) -> SemanticConfig:
        """The semantic method's part of this config, on a resolved ``device``."""
        return SemanticConfig(
            self.eps,
            self.n_clusters,
            self.max_cluster_size,
            self.sample_size,
            self.kmeans_iterations,
            self.block_size,
            self.seed,
            device,
        )

    @property
    def threshold(self) -> float:
        """The cosine a semantic duplicate pair must exceed."""
        return 1.0 - self.eps
