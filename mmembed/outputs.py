"""Where an embed job's outputs live.

Outputs are aligned with input shards: ``<out>/embeddings/<shard>.parquet`` and
``<out>/errors/<shard>.parquet``. A shard is complete when both exist; the errors file is
written last, so its presence marks completion.
"""

from __future__ import annotations

from dataclasses import dataclass

EMBEDDINGS_DIR = "embeddings"
ERRORS_DIR = "errors"
SUMMARY_FILE = "summary.json"


def join(base: str, *parts: str) -> str:
    """Join URL or path parts with '/', which local paths, gs:// and s3:// all accept."""
    return "/".join([base.rstrip("/"), *parts])


@dataclass(frozen=True)
class ShardOutputs:
    embeddings: str
    errors: str

    @classmethod
    def for_shard(cls, out: str, shard: str) -> ShardOutputs:
        return cls(join(out, EMBEDDINGS_DIR, f"{shard}.parquet"), join(out, ERRORS_DIR, f"{shard}.parquet"))
