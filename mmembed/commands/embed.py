"""``make-shards`` and ``embed``: bring data in as WebDataset shards and embed it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmembed.commands.output import print_json


def register(sub: argparse._SubParsersAction) -> None:
    from mmembed.embed.options import add_embed_arguments

    shards = sub.add_parser("make-shards", help="write WebDataset shards from images + captions")
    source = shards.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images with sidecar <name>.txt captions (and <name>.json)")
    source.add_argument("--manifest", help="CSV or Parquet manifest: image path, caption, extra columns")
    source.add_argument(
        "--dataset",
        choices=("digits", "fashion-mnist"),
        help="a labelled set an installed package ships (scikit-learn digits; Debian dataset-fashion-mnist), "
        "captioned from its class names",
    )
    shards.add_argument("--split", default="train", choices=("train", "test"), help="with --dataset")
    shards.add_argument("--limit", type=int, help="with --dataset: at most this many samples")
    shards.add_argument("--image-column", default="image")
    shards.add_argument("--caption-column", default="caption")
    shards.add_argument("--image-root", help="folder that relative manifest image paths are under")
    shards.add_argument("--key-column", help="manifest column holding unique sample keys (default: row numbers)")
    shards.add_argument("--out", required=True)
    shards.add_argument("--samples-per-shard", type=int, default=1000)
    shards.add_argument("--pattern", default="%05d.tar", help="shard file name pattern, after the prefix")
    shards.add_argument(
        "--prefix",
        help="shard name prefix (default: the input folder's or manifest's name, or DATASET-SPLIT), so shards of "
        "several sources can share --out; '' for none",
    )
    shards.add_argument("--overwrite", action="store_true", help="replace shards of the same names in --out")
    shards.set_defaults(handler=make_shards)

    embed_parser = sub.add_parser(
        "embed", help="embed WebDataset shards with OpenCLIP (Beam job; unknown options go to Beam)"
    )
    add_embed_arguments(embed_parser)
    embed_parser.set_defaults(handler=embed, passes_unknown=True)


def make_shards(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.makeshards import ShardSpec, samples_from_folder, samples_from_manifest, source_prefix, write_shards

    source = f"{args.dataset}-{args.split}" if args.dataset else (args.manifest or args.images)
    spec = ShardSpec(
        out=args.out,
        samples_per_shard=args.samples_per_shard,
        pattern=args.pattern,
        prefix=source_prefix(source) if args.prefix is None else args.prefix,
        overwrite=args.overwrite,
    )
    if args.dataset:
        from mmembed.labelled import labelled_samples, load

        samples = labelled_samples(load(args.dataset, args.split), limit=args.limit)
    elif args.manifest:
        image_root = Path(args.image_root) if args.image_root else None
        samples = samples_from_manifest(
            Path(args.manifest), args.image_column, args.caption_column, image_root, args.key_column
        )
    else:
        samples = samples_from_folder(Path(args.images))
    result = write_shards(samples, spec)
    missing = result.pop("missing_images")
    print_json({**result, "missing_images": len(missing), "missing_examples": missing[:20]})
    return make_shards_status(result["samples"], missing)


def make_shards_status(written: int, missing: list[str]) -> int:
    """2 when no sample could be written, 3 when some inputs were skipped (named on stderr), else 0."""
    if not written:
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
    from mmembed.embed.options import config_from_args

    return run_and_report(config_from_args(args), extra)
