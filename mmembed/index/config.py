"""The index stages' configs: every option of an index build (``IndexBuildConfig``, ``ShardedBuildConfig``) and of
``eval-index`` (``EvalIndexConfig``) as one validated, frozen value; each field declares its command-line option.

Light on purpose: ``mmembed --help`` imports it, so faiss is imported only where a build runs."""

from __future__ import annotations

from dataclasses import dataclass

from mmembed import storage
from mmembed.config import DEVICES, ConfigError
from mmembed.index.choose import FAMILIES, parse_memory
from mmembed.options import option

WORK_DIR = "_parts"  # under out_dir: trained indexes, tuning queries and parts; removed once the index is complete


@dataclass(frozen=True)
class IndexBuildConfig:
    """Build the image and text indexes of one embed output dir into ``out_dir`` (typically ``<emb>/index``).

    max_index_memory: RAM budget of ONE index ('4G', '512M' or bytes); it drives the index choice.
    family: 'auto' picks by size and budget; 'flat', 'hnsw' or 'ivfpq' force a family (sized automatically).
    index_key: a full faiss factory string instead (inner product metric), e.g. 'IVF256,Flat'.
    recall_target: search parameters are tuned until 10-recall@10 vs exact search reaches it.
    """

    embeddings_dir: str = option(
        flag="--embeddings", help="an embed job's --out dir (holds embeddings/*.parquet); path or s3:// gs:// URL"
    )
    out_dir: str = option(flag="--out", help="index dir to write (e.g. EMB/index); path or s3:// gs:// URL")
    max_index_memory: str | int = option(
        "4G",
        aliases=("--max_index_memory_usage",),
        help="RAM budget of ONE index (e.g. 4G, 512M); drives the index choice",
    )
    recall_target: float = option(0.95, help="10-recall@10 vs exact search that the tuned search params reach")
    device: str = option("auto", choices=DEVICES, help="where the index is trained and tuned (faiss-gpu if present)")
    family: str = option(
        "auto", choices=FAMILIES, help="auto picks by size and budget; flat, hnsw or ivfpq force a family"
    )
    index_key: str | None = option(
        None,
        aliases=("--index_key",),
        help="a faiss factory string instead of the automatic choice (IVF for sharded builds), e.g. 'IVF4096,PQ32x8np'",
    )
    max_train_vectors: int = option(500_000, help="vectors the index trains on (a seeded sample)")
    tune_queries: int = option(1000, help="vectors the search parameters are tuned with")
    batch_size: int = option(65_536, help="vectors per Parquet read batch")
    seed: int = option(0, help="seeds the training and tuning samples")
    overwrite: bool = option(False, help="rebuild a complete index and discard old parts")

    def __post_init__(self) -> None:
        if not self.embeddings_dir or not self.out_dir:
            raise ConfigError("give both embeddings_dir (an embed job's --out) and out_dir (where the index goes)")
        parse_memory(self.max_index_memory)
        if not 0 < self.recall_target <= 1:
            raise ConfigError(f"recall target must be in (0, 1], got {self.recall_target}")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {DEVICES}")
        if self.family not in FAMILIES:
            raise ConfigError(f"index family {self.family!r} is not one of {FAMILIES}")
        if self.index_key is not None and self.family != "auto":
            raise ConfigError("give either --family or --index-key, not both")
        for name in ("max_train_vectors", "tune_queries", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.max_index_memory)


@dataclass(frozen=True)
class ShardedBuildConfig:
    """An ``IndexBuildConfig`` plus ``files_per_part``: how many embeddings files one parallel work item adds
    (the index stage's config: a job file holds both sets of keys side by side)."""

    index: IndexBuildConfig = option(flatten=True)
    files_per_part: int = option(1, help="with --sharded (and in job files): embeddings files per parallel part")

    def __post_init__(self) -> None:
        if self.files_per_part < 1:
            raise ConfigError(f"files per part must be >= 1, got {self.files_per_part}")
        if self.index.family not in ("auto", "ivfpq"):
            raise ConfigError(
                f"a sharded build merges IVF inverted lists; family {self.index.family!r} has none: "
                "use --family ivfpq (or auto) or an IVF --index-key, or build flat/hnsw indexes without --sharded"
            )

    @property
    def work_dir(self) -> str:
        return storage.join(str(self.index.out_dir), WORK_DIR)


@dataclass(frozen=True)
class EvalIndexConfig:
    """eval-index: recall@1/10/100 and queries/s of an index against exact search over the same vectors."""

    index_dir: str = option(flag="--index", help="index dir written by `mmembed index` (path or s3:// gs:// URL)")
    embeddings_dir: str | None = option(
        None, flag="--embeddings", help="embed output dir (default: the files recorded in infos.json)"
    )
    queries: int = option(1000, help="how many of the set's own vectors to query")
    queries_file: str | None = option(None, help="text queries, one per line, for text -> image (path or URL)")
    seed: int = option(0, help="seeds the choice of query vectors")
    device: str = option("auto", choices=DEVICES, help="where the text queries are encoded")

    def __post_init__(self) -> None:
        if self.queries < 1:
            raise ConfigError(f"--queries must be >= 1, got {self.queries}")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {DEVICES}")
