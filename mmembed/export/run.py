"""``run(config)``: a query and/or a --where filter over an index -> the selected samples copied byte for byte
into new WebDataset shards, with a manifest and a summary.

Layout of ``out``: ``shards/export-000000.tar`` ... (every tar member of each sample, same bytes, same names;
a key that is already in the same output shard, e.g. the same key from two sources, gets ``_1``, ``_2``...),
``manifest.parquet`` (one row per selected sample: new (shard, key), source (shard, key, offset), rank, score,
query, why it was taken, and an error for a sample whose bytes could not be read) and ``summary.json``
(written last). Samples are read at the offsets the index recorded (``mmembed.tarread``): a seek and a few
range reads each, never a scan of a source shard.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.export.config import SHARD_PREFIX, ExportConfig
from mmembed.shards import list_shards, shard_name
from mmembed.tarread import FIRST_READ, GZIP_SUFFIXES, TAR_BLOCK, SampleUnavailable, read_sample_at
from mmembed.tarwrite import NumberedShards

if TYPE_CHECKING:
    from mmembed.index import IndexSet

log = logging.getLogger(__name__)

SHARDS_DIR = "shards"
MANIFEST_FILE = "manifest.parquet"
SUMMARY_FILE = "summary.json"
READ_BLOCK = 4 * FIRST_READ  # bytes an object-store read fetches ahead: most samples take one or two requests
OPEN_SHARDS = 8  # source shards kept open at once (results in rank order hop between shards)
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string()),  # the sample's output shard (``export-000000``); null for an error row
        pa.field("key", pa.string()),  # its key there; null for an error row
        pa.field("source_shard", pa.string(), nullable=False),
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),  # the image member's data offset in the source
        pa.field("rank", pa.int32()),  # 1 = best hit; null without a query
        pa.field("score", pa.float32()),  # cosine similarity to the query; null without one
        pa.field("query", pa.string()),  # the --query text or --image file; null without one
        pa.field("selected_by", pa.string(), nullable=False),  # why the sample was taken
        pa.field("members", pa.list_(pa.string())),  # member names written, in tar order
        pa.field("bytes", pa.int64()),  # their data bytes
        pa.field("error", pa.string()),  # why the sample could not be exported; null when it was
    ]
)


@dataclass(frozen=True)
class Selected:
    """One sample to export: its identity in the index, where its image member's data is, and its rank."""

    shard: str
    key: str
    offset: int
    rank: int | None = None
    score: float | None = None


def run(config: ExportConfig) -> dict[str, Any]:
    """Select, read and write; the summary (also written to ``summary.json``). Errors that make the export
    impossible (bad --where, missing shards, a non-empty --out) are ConfigErrors raised before anything is
    written; a sample that cannot be read is an error row in the manifest and counted in ``errors``."""
    started = time.monotonic()
    existing = _prepare_out(config.out, config.overwrite)
    shard_urls = {shard_name(url): url for url in list_shards(list(config.shards))}
    from mmembed.index import load_index

    index = load_index(config.index_dir)
    selected, below = _select(config, index)
    urls = _source_urls(selected, shard_urls)
    starts = walk_starts(index, selected)
    storage.delete(existing)  # --overwrite: the last export's files go only once the new one is sure to start
    rows, shards = _export(config, selected, starts, urls)
    manifest = storage.join(config.out, MANIFEST_FILE)
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    storage.write_atomic(manifest, lambda f: pq.write_table(table, f))
    errors = [row["error"] for row in rows if row["error"] is not None]
    summary = {
        "out": config.out,
        "manifest": manifest,
        "shards": shards,
        "selected": len(selected),
        "exported": len(rows) - len(errors),
        "errors": len(errors),
        "error_examples": errors[:5],
        "below_min_score": below,
        "bytes": sum(row["bytes"] or 0 for row in rows),
        "query": config.query,
        "image": config.image,
        "where": config.where,
        "min_score": config.min_score,
        "k": config.limit,
        "target": config.target if config.has_query else None,
        "mode": config.mode if config.query is not None else None,
        "index": config.index_dir,
        "seconds": round(time.monotonic() - started, 3),
    }
    storage.write_bytes(storage.join(config.out, SUMMARY_FILE), json.dumps(summary, indent=2).encode())
    return summary


def _prepare_out(out: str, overwrite: bool) -> list[str]:
    """Refuse a non-empty ``out`` unless ``overwrite``; with it, the earlier export's files to delete."""
    storage.check_writable(out)
    storage.remove_temporaries(out)  # staging folders of a run that was killed
    present = storage.glob(storage.join(out, "**"))
    if present and not overwrite:
        raise ConfigError(
            f"--out {out} is not empty ({len(present)} file(s), e.g. {present[0]}); nothing was written. "
            "Fix: pass --overwrite to replace the export there, or give an empty --out"
        )
    base = os.path.abspath(storage.local_path(out)) if storage.is_local(out) else out  # as glob names files
    ours = {storage.join(base, MANIFEST_FILE), storage.join(base, SUMMARY_FILE)}
    prefix = storage.join(base, SHARDS_DIR, f"{SHARD_PREFIX}-")
    return [url for url in present if url in ours or (url.startswith(prefix) and url.endswith(".tar"))]


def _select(config: ExportConfig, index: IndexSet) -> tuple[list[Selected], int]:
    """The samples to export in output order, and how many hits --min-score dropped."""
    if not config.has_query:
        from mmembed.index.where import rows_matching

        row_ids = np.flatnonzero(rows_matching(index, config.where))
        table = index.lookup(row_ids).select(["shard", "key", "offset"])
        table = table.sort_by([("shard", "ascending"), ("offset", "ascending")])
        rows = table.slice(0, config.limit).to_pylist() if config.limit else table.to_pylist()
        return [Selected(r["shard"], r["key"], r["offset"]) for r in rows], 0
    from mmembed.search import Searcher

    searcher = Searcher(index, device=config.device)
    if config.query is not None:
        hits = searcher.search_text(config.query, config.limit, config.target, config.where, config.mode)[0]
    else:
        hits = searcher.search_image(config.image, config.limit, config.target, where=config.where)[0]
    kept = [h for h in hits if config.min_score is None or h.score >= config.min_score]
    return [Selected(h.shard, h.key, h.offset, h.rank, h.score) for h in kept], len(hits) - len(kept)


def _source_urls(selected: list[Selected], shard_urls: dict[str, str]) -> dict[str, str]:
    """Source shard name -> URL for every shard the selection needs; a ConfigError naming those --shards lacks
    or that are gzip-compressed (their members cannot be reached by seeking)."""
    needed = sorted({s.shard for s in selected})
    missing = [name for name in needed if name not in shard_urls]
    if missing:
        raise ConfigError(
            f"{len(missing)} shard(s) holding selected samples are not among --shards: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}; nothing was written. Fix: point --shards at the shards that "
            "were embedded, e.g. --shards 'data/shards/*.tar'"
        )
    packed = [shard_urls[name] for name in needed if shard_urls[name].endswith(GZIP_SUFFIXES)]
    if packed:
        raise ConfigError(
            f"shard {packed[0]} is gzip-compressed ({len(packed)} such), which cannot be seeked to a sample's "
            "recorded offset; nothing was written. Fix: gunzip the shards and pass the .tar files with --shards"
        )
    return {name: shard_urls[name] for name in needed}


def walk_starts(index: IndexSet, selected: list[Selected]) -> list[int]:
    """For each selected sample, where a walk over its shard's tar headers starts: the header of the previous
    indexed sample's image member (the sample's own members lie after it), or 0 for a shard's first."""
    if not selected:
        return []
    ids = index.ids.select(["shard", "offset"])
    ids = ids.filter(pc.is_in(ids["shard"], value_set=pa.array(sorted({s.shard for s in selected}))))
    encoded = pc.dictionary_encode(ids["shard"]).combine_chunks()
    codes, offsets = encoded.indices.to_numpy(), ids["offset"].to_numpy()
    order = np.lexsort((offsets, codes))
    codes, offsets = codes[order], offsets[order]
    code_of = {name: code for code, name in enumerate(encoded.dictionary.to_pylist())}
    starts = []
    for sample in selected:
        code = code_of[sample.shard]
        shard_offsets = offsets[np.searchsorted(codes, code, "left") : np.searchsorted(codes, code, "right")]
        before = int(np.searchsorted(shard_offsets, sample.offset, "left"))
        starts.append(int(shard_offsets[before - 1]) - TAR_BLOCK if before else 0)
    return starts


def _export(
    config: ExportConfig, selected: list[Selected], starts: list[int], urls: dict[str, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Read each selected sample and append it to the output shards; its manifest rows and the shard URLs."""
    rows = []
    sources = OpenShards(urls)
    with storage.staging_dir(config.out) as staging:
        writer = NumberedShards(storage.join(config.out, SHARDS_DIR), staging, SHARD_PREFIX, config.samples_per_shard)
        keys = KeyChooser()
        try:
            for sample, start in zip(selected, starts, strict=True):
                row = _row(config, sample)
                try:
                    members = read_sample_at(sources.get(sample.shard), sample.offset, sample.key, start)
                except (SampleUnavailable, OSError) as exc:
                    row["error"] = f"shard {sample.shard}: {exc}"
                    log.warning("not exported: %s", row["error"])
                    rows.append(row)
                    continue
                key = keys.choose(writer.current, sample.key)
                renamed = [(key + name[len(sample.key) :], data) for name, data in members]
                row["shard"] = writer.write(renamed)
                row.update(key=key, members=[name for name, _ in renamed], bytes=sum(len(d) for _, d in members))
                rows.append(row)
            shards = writer.close()
        finally:
            sources.close()
    return rows, shards


def _row(config: ExportConfig, sample: Selected) -> dict[str, Any]:
    """A manifest row for ``sample`` before it is read: identity, rank, score, query and why it was taken."""
    if config.has_query:
        flag = "--query" if config.query is not None else "--image"
        ranked_by = "" if config.mode == "vector" else f" ({config.mode} ranking)"
        why = [f"rank {sample.rank} of {flag}{ranked_by} on the {config.target} index"]
        if config.min_score is not None:
            why.append(f"score {sample.score:.4f} >= --min-score {config.min_score}")
    else:
        why = []
    if config.where:
        why.append(f"matches --where {config.where!r}")
    return {
        "shard": None,
        "key": None,
        "source_shard": sample.shard,
        "source_key": sample.key,
        "source_offset": sample.offset,
        "rank": sample.rank,
        "score": sample.score,
        "query": config.query if config.query is not None else config.image,
        "selected_by": "; ".join(why),
        "members": None,
        "bytes": None,
        "error": None,
    }


class KeyChooser:
    """A sample's key in its output shard: its source key, or ``<key>_1``, ``_2``... when a sample from another
    source already took that key in the same output shard (a key must be unique within a shard)."""

    def __init__(self) -> None:
        self._shard: str | None = None
        self._taken: set[str] = set()

    def choose(self, shard: str, key: str) -> str:
        if shard != self._shard:
            self._shard, self._taken = shard, set()
        chosen, number = key, 0
        while chosen in self._taken:
            number += 1
            chosen = f"{key}_{number}"
        self._taken.add(chosen)
        return chosen


class OpenShards:
    """Source shards opened for seeking, the ``OPEN_SHARDS`` most recently used kept open."""

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = urls
        self._open: OrderedDict[str, IO[bytes]] = OrderedDict()

    def get(self, shard: str) -> IO[bytes]:
        if shard in self._open:
            self._open.move_to_end(shard)
            return self._open[shard]
        f = storage.open_read(self.urls[shard], block_size=READ_BLOCK)
        self._open[shard] = f
        while len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)[1].close()
        return f

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()
