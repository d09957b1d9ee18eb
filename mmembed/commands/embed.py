"""``make-shards`` and ``embed``: bring data in as WebDataset shards and embed it. Their options are the fields of
``MakeShardsConfig`` and ``EmbedJobConfig`` (``mmembed.stages`` builds the parsers)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mmembed.commands.output import print_json
from mmembed.config import MakeShardsConfig
from mmembed.stages import config_of, stage


def run_make_shards(config: MakeShardsConfig) -> dict[str, Any]:
    """Write the shards; returns the shard paths, the sample count and the inputs whose image file is missing."""
    from mmembed.makeshards import ShardSpec, samples_from_folder, samples_from_manifest, source_prefix, write_shards

    source = f"{config.dataset}-{config.split}" if config.dataset else (config.manifest or config.images)
    spec = ShardSpec(
        out=config.out,
        samples_per_shard=config.samples_per_shard,
        pattern=config.pattern,
        prefix=source_prefix(source) if config.prefix is None else config.prefix,
        overwrite=config.overwrite,
    )
    if config.dataset:
        from mmembed.labelled import labelled_samples, load

        samples = labelled_samples(load(config.dataset, config.split), limit=config.limit)
    elif config.manifest:
        image_root = Path(config.image_root) if config.image_root else None
        samples = samples_from_manifest(
            Path(config.manifest), config.image_column, config.caption_column, image_root, config.key_column
        )
    else:
        samples = samples_from_folder(Path(config.images))
    return write_shards(samples, spec)


def make_shards(args: argparse.Namespace, extra: list[str]) -> int:
    result = run_make_shards(config_of(stage("make-shards"), args))
    missing = result["missing_images"]
    print_json({**result, "missing_images": len(missing), "missing_examples": missing[:20]})
    return make_shards_status(result)


def make_shards_status(result: dict[str, Any]) -> int:
    """2 when no sample could be written, 3 when some inputs were skipped (named on stderr), else 0."""
    missing = result["missing_images"]
    if not result["samples"]:
        print("mmembed make-shards: error: no sample could be written; check the input path", file=sys.stderr)
        return 2
    if missing:
        print(
            f"mmembed make-shards: {len(missing)} input(s) skipped, their image files are missing "
            f"(first: {missing[0]}); fix the paths and run again into an empty --out",
            file=sys.stderr,
        )
        return 3
    return 0


def embed(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.embed.job import run_and_report

    return run_and_report(config_of(stage("embed"), args), extra)
