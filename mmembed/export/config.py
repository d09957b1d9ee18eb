"""ExportConfig: what to export (a query, a --where filter, or both) from which index and shards, and where to."""

from __future__ import annotations

from dataclasses import dataclass

from mmembed.config import DEVICES, MAX_K, SEARCH_MODES, TARGETS, ConfigError
from mmembed.options import option

DEFAULT_K = 100  # samples a query exports when -k is not given
SHARD_PREFIX = "export"  # output shards are <out>/shards/export-000000.tar ...


@dataclass(frozen=True)
class ExportConfig:
    """Export the samples a query (``query`` text or ``image`` file) and/or a ``where`` filter select.

    With a query: its ``k`` best hits (default ``DEFAULT_K``) on the ``target`` index, those scoring below
    ``min_score`` dropped, in rank order. With ``where`` alone: every matching row (the first ``k`` when
    given) in source shard and offset order. ``shards`` are the patterns of the shards that were embedded
    (local or object-store URLs); ``out`` a local dir or object-store URL that must be empty unless
    ``overwrite``.
    """

    index_dir: str = option(flag="--index", help="index dir written by `mmembed index` (path or s3:// gs:// URL)")
    shards: tuple[str, ...] = option(
        metavar="SHARD", help="the shards that were embedded (paths, globs, {a..b}, s3:// gs:// URLs; several values)"
    )
    out: str = option(help="an empty dir or URL for shards/export-*.tar, manifest.parquet and summary.json")
    query: str | None = option(None, metavar="TEXT", help="text query: export its best hits")
    image: str | None = option(None, metavar="FILE", help="image query (file or URL): export its best hits")
    where: str | None = option(
        None,
        metavar="EXPR",
        help='SQL condition over the index\'s columns, e.g. "width >= 512"; alone, it selects every match',
    )
    mode: str = option(
        "vector",
        choices=SEARCH_MODES,
        help="how --query ranks: vector (embeddings), keyword (caption words, phrases, prefixes) or hybrid (both)",
    )
    min_score: float | None = option(None, metavar="S", help="with a query: drop hits of lower cosine similarity")
    k: int | None = option(
        None, flag="-k", metavar="N", help=f"at most N samples (default: {DEFAULT_K} with a query, every match without)"
    )
    target: str = option("image", choices=TARGETS, help="with a query: search images or captions")
    samples_per_shard: int = option(1000, metavar="N", help="samples per output shard")
    overwrite: bool = option(False, help="replace an earlier export in --out")
    device: str = option("auto", choices=DEVICES, help="the query encoder's device")

    def __post_init__(self) -> None:
        if not (self.query or self.image or self.where):
            raise ConfigError("nothing selects samples: give --query TEXT, --image FILE or --where EXPR")
        if self.query is not None and self.image is not None:
            raise ConfigError("give one query: --query TEXT or --image FILE, not both (add --where to filter)")
        for flag, value in (("--query", self.query), ("--image", self.image), ("--where", self.where)):
            if value is not None and not value.strip():
                raise ConfigError(f"{flag} is empty; give a non-empty value or leave the flag out")
        if self.mode not in SEARCH_MODES:
            raise ConfigError(f"--mode must be one of {', '.join(SEARCH_MODES)}, got {self.mode!r}")
        if self.mode != "vector" and self.query is None:
            raise ConfigError(f"--mode {self.mode} ranks a --query TEXT; give one, or leave --mode at vector")
        if self.min_score is not None:
            if self.mode != "vector":
                raise ConfigError(
                    f"--min-score is a cosine similarity, which --mode {self.mode} does not give; use -k to bound "
                    "the export, or --mode vector"
                )
            if not self.has_query:
                raise ConfigError("--min-score needs a --query or --image: --where alone gives no scores")
            if not -1.0 <= self.min_score <= 1.0:
                raise ConfigError(f"--min-score is a cosine similarity in [-1, 1], got {self.min_score}")
        if self.k is not None and not 1 <= self.k <= MAX_K:
            raise ConfigError(f"-k must be between 1 and {MAX_K}, got {self.k}")
        if self.target not in TARGETS:
            raise ConfigError(f"--target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.samples_per_shard < 1:
            raise ConfigError(f"--samples-per-shard must be >= 1, got {self.samples_per_shard}")
        if not self.shards:
            raise ConfigError("no --shards: give the shards that were embedded, e.g. --shards 'data/shards/*.tar'")
        if not self.index_dir or not self.out:
            raise ConfigError("--index and --out are required")
        if self.device not in DEVICES:
            raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    @property
    def has_query(self) -> bool:
        return self.query is not None or self.image is not None

    @property
    def limit(self) -> int | None:
        """How many samples to select at most: ``k``, else ``DEFAULT_K`` with a query, else no limit."""
        return self.k if self.k is not None else (DEFAULT_K if self.has_query else None)
