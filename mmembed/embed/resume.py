"""The resume rule: which shards a run may skip, and what each shard's outputs record so that it can tell.

A shard is skipped only when both its files exist under their final names, it did not fail for a reason
worth retrying, and its embeddings file says it was made from the same file (URL, size, modification
time) by the same model and settings. Any other difference stops the run before any work: mixing two
models' vectors, or another dataset's, in one output folder would misattribute samples without a word.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq

from mmembed import storage
from mmembed.config import ConfigError, DecodeConfig
from mmembed.embed.summary import ShardCounts
from mmembed.outputs import ShardOutputs
from mmembed.records import ShardSource
from mmembed.schema import IDENTITY_KEYS, read_provenance
from mmembed.shards import shard_name

SOURCE_KEY = b"mmembed.source"  # the input shard an embeddings file was made from: url, size, mtime
SETTINGS_KEY = b"mmembed.settings"  # the job settings that decide which samples it holds and how
# Shard-level failures that may be transient (a read that failed, an unexpected exception): a re-run retries them.
RETRIED_SHARD_ERRORS = ("unreadable_shard", "shard_failed")
# Provenance fields compared on resume: what puts vectors in one space, and the stored dtype.
RESUME_PROVENANCE_KEYS = (*IDENTITY_KEYS, "dtype")
# Settings added after outputs began to record theirs: what an output without the entry was made with.
SETTINGS_BEFORE_THEY_WERE_RECORDED = {"captions": "required", "exact_decode": True, "decoder": "cpu"}
OVERWRITE_FIX = "Nothing was changed. Fix: re-run with --overwrite to redo every shard, or pass another --out."


class ResumeRefused(ConfigError):
    """Existing outputs cannot be reused by this run; the message names the file, the difference and the fix."""


def job_settings(decode: DecodeConfig) -> dict[str, Any]:
    """The decode settings that decide which samples a shard's outputs hold and what their rows say."""
    return {
        "caption_key": decode.caption_key,
        "captions": decode.captions,
        "exact_decode": decode.exact_decode,
        "decoder": decode.decoder,
        "metadata_key": decode.metadata_key,
        "image_extensions": list(decode.image_extensions),
        "max_image_pixels": decode.max_image_pixels,
    }


def output_metadata(source: ShardSource, settings: dict[str, Any]) -> dict[bytes, bytes]:
    """Footer key/values of a shard's embeddings file: where it came from and the settings that made it."""
    return {
        SOURCE_KEY: json.dumps(source.fingerprint(), sort_keys=True).encode(),
        SETTINGS_KEY: json.dumps(settings, sort_keys=True).encode(),
    }


@dataclass(frozen=True)
class ShardRecord:
    """What a shard's existing outputs say: their counts, and how and from what they were made."""

    counts: ShardCounts
    source: dict[str, Any] | None
    provenance: dict[str, Any]
    settings: dict[str, Any] | None


def read_shard_outputs(out: str, shard: str) -> ShardRecord:
    """Read a shard's embeddings footer and small errors file; a damaged file stops the run, naming it."""
    outputs = ShardOutputs.for_shard(out, shard)
    path = outputs.embeddings
    try:
        with storage.open_read(path) as f:
            meta = pq.ParquetFile(f).metadata
        path = outputs.errors
        with storage.open_read(path) as f:
            errors = pq.read_table(f, columns=["key", "code"]).to_pylist()
    except Exception as exc:  # noqa: BLE001 - whatever the reader raised, the file is not usable
        raise ResumeRefused(
            f"{path} is not a readable Parquet file ({type(exc).__name__}: {exc}), so shard {shard} cannot be "
            f"resumed. Nothing was changed. Fix: delete {outputs.embeddings} and {outputs.errors} to redo that "
            "shard, or re-run with --overwrite to redo every shard."
        ) from None
    footer = meta.metadata or {}
    return ShardRecord(
        ShardCounts.from_errors(shard, meta.num_rows, errors),
        _json(footer.get(SOURCE_KEY)),
        read_provenance(meta.schema.to_arrow_schema()) or {},
        _json(footer.get(SETTINGS_KEY)),
    )


def _json(raw: bytes | None) -> Any:
    return json.loads(raw) if raw else None


def first_difference(
    record: ShardRecord, source: ShardSource, provenance: dict[str, Any], settings: dict[str, Any]
) -> str | None:
    """The first field in which existing outputs differ from what this run would write, as a phrase."""
    if record.source is None or record.settings is None:
        return "no record of its source shard and settings (an older mmembed wrote it)"
    expected = source.fingerprint()
    pairs = [(f"source {name}", record.source.get(name), expected[name]) for name in ("url", "size", "mtime")]
    pairs += [(name, record.provenance.get(name), provenance.get(name)) for name in RESUME_PROVENANCE_KEYS]
    recorded = {name: record.settings.get(name, SETTINGS_BEFORE_THEY_WERE_RECORDED.get(name)) for name in settings}
    pairs += [(name.replace("_", " "), recorded[name], value) for name, value in settings.items()]
    for name, was, now in pairs:
        if was != now:
            flag = _continue_flag(name.replace(" ", "_"), was)
            hint = f" (to continue with the outputs there: {flag})" if flag else ""
            return f"{name} {_show(was)}, but this run has {_show(now)}{hint}"
    return None


def _continue_flag(setting: str, value: Any) -> str | None:
    """The embed option that repeats a recorded decode setting, for a refusal's fix (None for other fields)."""
    if setting == "exact_decode":
        return "--exact-decode" if value else "leave out --exact-decode"
    flags = {"captions": "--captions", "decoder": "--decode", "caption_key": "--caption-key"}
    flags["max_image_pixels"] = "--max-image-pixels"
    return f"{flags[setting]} {value}" if setting in flags else None


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 200 else text[:199] + "…"


@dataclass
class ResumePlan:
    """The shards this run embeds, and the counts of those it keeps."""

    todo: list[ShardSource] = field(default_factory=list)
    done: dict[str, ShardCounts] = field(default_factory=dict)


def plan_resume(
    out: str, sources: list[ShardSource], provenance: dict[str, Any], settings: dict[str, Any], overwrite: bool
) -> ResumePlan:
    """Split ``sources`` into shards to embed and complete shards to keep; refuse (changing nothing) when a
    complete shard was made from another file, model or settings."""
    if overwrite:
        return ResumePlan(todo=list(sources))
    plan = ResumePlan()
    for source in sources:
        shard = shard_name(source.url)
        outputs = ShardOutputs.for_shard(out, shard)
        if not (storage.exists(outputs.errors) and storage.exists(outputs.embeddings)):
            plan.todo.append(source)
            continue
        record = read_shard_outputs(out, shard)
        if any(code in RETRIED_SHARD_ERRORS for code in record.counts.shard_errors):
            plan.todo.append(source)
            continue
        difference = first_difference(record, source, provenance, settings)
        if difference is not None:
            raise ResumeRefused(
                f"cannot resume in {out}: {outputs.embeddings} was made with {difference}. {OVERWRITE_FIX}"
            )
        plan.done[shard] = record.counts
    return plan
