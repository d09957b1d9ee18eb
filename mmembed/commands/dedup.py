"""``dedup``: exact, perceptual and semantic duplicate groups, a keep list, and optionally clean shards; every
path may be a local one or an object-store URL (``s3://``, ``gs://``). Its options are ``DedupConfig``'s fields
and the switches below (``mmembed.stages``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mmembed.commands.output import print_json
from mmembed.options import option
from mmembed.stages import command_options, config_of, stage


@dataclass(frozen=True)
class DedupCommand:
    """``mmembed dedup``'s switches beside the dedup config."""

    beam: bool = option(False, help="run as a Beam job (group by hash / cluster)")
    write_shards: str | None = option(None, metavar="DIR", help="also write deduplicated WebDataset shards to DIR")
    shards: tuple[str, ...] | None = option(
        None, metavar="SHARD", help="with --write-shards: the input shards (paths, globs, {a..b})"
    )


def dedup_command(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed import storage
    from mmembed.dedup import run_dedup
    from mmembed.shards import list_shards

    found = stage("dedup")
    switches: DedupCommand = command_options(found, args)
    if switches.write_shards and not switches.shards:
        raise ValueError("--write-shards needs --shards: the input shards the embeddings came from")
    if extra and not switches.beam:
        raise ValueError(f"unrecognized arguments: {' '.join(extra)} (Beam options apply with --beam only)")
    config = config_of(found, args)
    shards: list[str] = []
    if switches.write_shards:  # a shard pattern matching nothing or an unwritable output fails before the run
        shards = list_shards(switches.shards)
        storage.check_writable(switches.write_shards)
    if switches.beam:
        from pipelines.dedup import run_config

        summary = run_config(config, extra)
    else:
        summary = run_dedup(config)
    if switches.write_shards:
        from mmembed.config import DecodeConfig
        from mmembed.dedup.outputs import KEEP_FILE
        from mmembed.dedup.write_shards import write_deduplicated_shards

        keep = storage.join(config.out_dir, KEEP_FILE)
        written = write_deduplicated_shards(shards, keep, switches.write_shards, DecodeConfig().image_extensions)
        summary["written_shards"] = {k: written[k] for k in ("shards", "samples")}
    print_json(summary)
    return 0
