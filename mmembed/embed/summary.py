"""Counting an embed job's outputs: per-shard counts, the summary that reconciles them, the exit status and
the lines a person reads at the end of a run."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from mmembed import storage
from mmembed.outputs import ShardOutputs

EXIT_OK = 0  # every shard was read to its end (sample-level errors allowed)
EXIT_INCOMPLETE = 3  # the job finished, but some shards failed as a whole or were cut short, or nothing was embedded
SHOWN_REASONS = 5  # error reasons printed after the summary


@dataclass
class ShardCounts:
    """What one shard's outputs hold: embedded rows and error rows by stage/code."""

    shard: str
    embedded: int = 0
    sample_errors: Counter = field(default_factory=Counter)  # code -> count, one per lost sample
    shard_errors: Counter = field(default_factory=Counter)  # code -> count, about the shard as a whole

    @classmethod
    def from_errors(cls, shard: str, embedded: int, errors: list[dict[str, Any]]) -> ShardCounts:
        """Counts from the embedded row count and the errors file's (key, code) rows."""
        return cls(
            shard,
            embedded,
            Counter(e["code"] for e in errors if e["key"] is not None),
            Counter(e["code"] for e in errors if e["key"] is None),
        )

    @property
    def has_errors(self) -> bool:
        return bool(self.sample_errors or self.shard_errors)


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


def exit_status(summary: dict[str, Any]) -> int:
    """0 when every shard was read to its end; 3 when some shard failed as a whole or nothing was embedded."""
    return EXIT_INCOMPLETE if summary["failed_shards"] or not summary["embedded"] else EXIT_OK


def first_error_reasons(out: str, counts: list[ShardCounts], limit: int = SHOWN_REASONS) -> list[str]:
    """Up to ``limit`` error reasons from the shards' errors files, shard-level failures first; only the
    files of shards that have errors are read, and only until enough are found."""
    with_errors = sorted((c for c in counts if c.has_errors), key=lambda c: (not c.shard_errors, c.shard))
    shard_level: list[str] = []
    sample_level: list[str] = []
    for c in with_errors:
        if len(shard_level) >= limit or (not c.shard_errors and len(shard_level) + len(sample_level) >= limit):
            break
        with storage.open_read(ShardOutputs.for_shard(out, c.shard).errors) as f:
            rows = pq.read_table(f, columns=["key", "reason"]).to_pylist()
        shard_level += [r["reason"] for r in rows if r["key"] is None]
        sample_level += [r["reason"] for r in rows if r["key"] is not None]
    return (shard_level + sample_level)[:limit]


def report(summary: dict[str, Any], out: str) -> None:
    """Print the summary as JSON on stdout (without the long provenance block) and, when there were errors,
    the first reasons on stderr, for people."""
    shown = {k: v for k, v in summary.items() if k not in ("provenance", "first_errors")}
    print(json.dumps(shown, indent=2, ensure_ascii=False), flush=True)
    reasons = summary.get("first_errors") or []
    if reasons:
        total = summary["errors"] + sum(summary["shard_errors"].values())
        print(f"{total} error(s); the first {len(reasons)} (all are in {out}/errors/):", file=sys.stderr)
        for reason in reasons:
            print(f"  - {reason}", file=sys.stderr)
