"""Where an embed job's outputs live, and the summary that reconciles them.

Outputs are aligned with input shards: ``<out>/embeddings/<shard>.parquet`` and
``<out>/errors/<shard>.parquet``. A shard is complete when both exist; the errors file is
written last, so its presence marks completion.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class ShardCounts:
    """What one shard's outputs hold: embedded rows and error rows by stage/code."""

    shard: str
    embedded: int = 0
    sample_errors: Counter = field(default_factory=Counter)  # code -> count, one per lost sample
    shard_errors: Counter = field(default_factory=Counter)  # code -> count, about the shard as a whole


def summarize(
    counts: list[ShardCounts], *, processed_shards: int, processed_samples: int, seconds: float
) -> dict[str, Any]:
    """The job summary: samples in = embedded + errors, with errors by reason code and throughput."""
    embedded = sum(c.embedded for c in counts)
    by_code: Counter = Counter()
    shard_errors: Counter = Counter()
    for c in counts:
        by_code.update(c.sample_errors)
        shard_errors.update(c.shard_errors)
    errors = sum(by_code.values())
    return {
        "shards": len(counts),
        "shards_processed": processed_shards,
        "shards_skipped": len(counts) - processed_shards,
        "samples_in": embedded + errors,
        "embedded": embedded,
        "errors": errors,
        "errors_by_reason": dict(sorted(by_code.items())),
        "shard_errors": dict(sorted(shard_errors.items())),
        "failed_shards": sorted(c.shard for c in counts if c.shard_errors),
        "samples_processed_this_run": processed_samples,
        "seconds": round(seconds, 3),
        "samples_per_second": round(processed_samples / seconds, 2) if seconds > 0 else None,
    }
