"""IndexBuildConfig: every option of an index build as one validated, frozen value."""

from __future__ import annotations

from dataclasses import dataclass

from mmembed.config import DEVICES, ConfigError
from mmembed.index.choose import FAMILIES, parse_memory


@dataclass(frozen=True)
class IndexBuildConfig:
    """Build the image and text indexes of one embed output dir into ``out_dir`` (typically ``<emb>/index``).

    max_index_memory: RAM budget of ONE index ('4G', '512M' or bytes); it drives the index choice.
    family: 'auto' picks by size and budget; 'flat', 'hnsw' or 'ivfpq' force a family (sized automatically).
    index_key: a full faiss factory string instead (inner product metric), e.g. 'IVF256,Flat'.
    recall_target: search parameters are tuned until 10-recall@10 vs exact search reaches it.
    """

    embeddings_dir: str
    out_dir: str
    max_index_memory: str | int = "4G"
    recall_target: float = 0.95
    device: str = "auto"
    family: str = "auto"
    index_key: str | None = None
    max_train_vectors: int = 500_000
    tune_queries: int = 1000
    batch_size: int = 65_536
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.embeddings_dir or not self.out_dir:
            raise ConfigError("give both embeddings_dir (an embed job's --out) and out_dir (where the index goes)")
        parse_memory(self.max_index_memory)
        if not 0 < self.recall_target <= 1:
            raise ConfigError(f"recall_target must be in (0, 1], got {self.recall_target}")
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {DEVICES}")
        if self.family not in FAMILIES:
            raise ConfigError(f"index family {self.family!r} is not one of {FAMILIES}")
        if self.index_key is not None and self.family != "auto":
            raise ConfigError("give either family or index_key, not both")
        for name in ("max_train_vectors", "tune_queries", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.max_index_memory)
