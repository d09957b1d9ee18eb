"""Write deduplicated WebDataset shards: every kept sample's members copied byte for byte, shard by shard.

Input shards are matched to the keep list by shard name (``mmembed.shards.shard_name``); output shards keep
the input names, so ``embeddings/<shard>.parquet`` and ``<out>/<shard>.tar`` line up. Shards, the keep list
and the out dir are local paths or object-store URLs; each output shard is published whole
(``storage.write_atomic``), so a reader never sees a partial tar.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from collections.abc import Iterable
from typing import IO, Any

import pyarrow.parquet as pq

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.records import RawSample
from mmembed.shards import iter_shard_samples, shard_name
from mmembed.tarwrite import TAR_FORMAT, add_member


def kept_keys_by_shard(keep_file: str) -> dict[str, set[str]]:
    """shard name -> keys kept there, from ``keep.parquet``."""
    with storage.open_read(keep_file) as f:
        table = pq.read_table(f, columns=["shard", "key"])
    kept: dict[str, set[str]] = defaultdict(set)
    for shard, key in zip(table["shard"].to_pylist(), table["key"].to_pylist(), strict=True):
        kept[shard].add(key)
    return kept


def write_deduplicated_shards(
    shard_urls: Iterable[str], keep_file: str, out_dir: str, image_extensions: tuple[str, ...]
) -> dict[str, Any]:
    """Copy the kept samples of each input shard into ``out_dir/<shard>.tar``; returns counts per shard."""
    kept = kept_keys_by_shard(keep_file)
    urls = {shard_name(url): url for url in shard_urls}
    missing = sorted(set(kept) - set(urls))
    if missing:
        raise ConfigError(
            f"keep list names shards {missing[:5]} that are not among --shards; fix: pass the shards that were embedded"
        )
    storage.check_writable(out_dir)
    written = {}
    for name in sorted(kept):
        written[name] = _copy_kept(urls[name], kept[name], storage.join(out_dir, f"{name}.tar"), image_extensions)
    return {"shards": len(written), "samples": sum(written.values()), "per_shard": written}


def _copy_kept(url: str, keys: set[str], target: str, image_extensions: tuple[str, ...]) -> int:
    """Stream ``url`` and write the samples whose key is in ``keys`` to ``target`` (atomically); returns how many."""
    count = 0

    def write(sink: IO[bytes]) -> None:
        nonlocal count
        with storage.open_read(url) as stream, tarfile.open(fileobj=sink, mode="w", format=TAR_FORMAT) as tar:
            for item in iter_shard_samples(stream, shard_name(url), image_extensions):
                if isinstance(item, RawSample) and item.key in keys:
                    for ext, data in item.members.items():
                        add_member(tar, f"{item.key}.{ext}", data)
                    count += 1

    storage.write_atomic(target, write)
    return count
