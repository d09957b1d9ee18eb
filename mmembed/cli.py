"""The ``mmembed`` command line: one entry point with sub-commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mmembed.config import ConfigError


def _make_shards(args: argparse.Namespace) -> int:
    from mmembed.makeshards import ShardSpec, samples_from_folder, samples_from_manifest, write_shards

    spec = ShardSpec(out=args.out, samples_per_shard=args.samples_per_shard, pattern=args.pattern)
    if args.manifest:
        samples = samples_from_manifest(
            Path(args.manifest),
            args.image_column,
            args.caption_column,
            Path(args.image_root) if args.image_root else None,
            args.key_column,
        )
    else:
        samples = samples_from_folder(Path(args.images))
    result = write_shards(samples, spec)
    missing = result.pop("missing_images")
    print(json.dumps({**result, "missing_images": len(missing), "missing_examples": missing[:20]}, indent=2))
    return 0


def _embed(args: argparse.Namespace, beam_args: list[str]) -> int:
    from pipelines.embed import config_from_args, run_job

    _print_summary(run_job(config_from_args(args), beam_args))
    return 0


def _print_summary(summary: dict) -> None:
    """The job summary without the (long) provenance block; summary.json on disk has it all."""
    print(json.dumps({k: v for k, v in summary.items() if k != "provenance"}, indent=2))


def _demo(args: argparse.Namespace, beam_args: list[str]) -> int:
    """Photos -> shards -> embeddings with the default offline model, all under ``--out``."""
    from mmembed.config import EmbedJobConfig, EncoderConfig
    from mmembed.demo import write_demo_images
    from mmembed.makeshards import ShardSpec, samples_from_folder, write_shards
    from pipelines.embed import run_job

    out = Path(args.out)
    count = write_demo_images(out / "photos")
    shards = write_shards(samples_from_folder(out / "photos"), ShardSpec(out=str(out / "shards"), samples_per_shard=20))
    logging.info("demo: %d photos -> %d shards", count, len(shards["shards"]))
    config = EmbedJobConfig(
        shards=(str(out / "shards" / "*.tar"),),
        out=str(out / "emb"),
        encoder=EncoderConfig(model=args.model, batch_size=16),
        overwrite=True,
    )
    _print_summary(run_job(config, beam_args))
    emb = out / "emb"
    print(f"embeddings: {emb / 'embeddings'}  errors: {emb / 'errors'}  summary: {emb / 'summary.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipelines.embed import add_embed_arguments

    parser = argparse.ArgumentParser(prog="mmembed", description="Multimodal embedding at dataset scale.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    shards = sub.add_parser("make-shards", help="write WebDataset shards from images + captions")
    source = shards.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images with sidecar <name>.txt captions (and <name>.json)")
    source.add_argument("--manifest", help="CSV or Parquet manifest: image path, caption, extra columns")
    shards.add_argument("--image-column", default="image")
    shards.add_argument("--caption-column", default="caption")
    shards.add_argument("--image-root", help="folder that relative manifest image paths are under")
    shards.add_argument("--key-column", help="manifest column holding unique sample keys (default: row numbers)")
    shards.add_argument("--out", required=True)
    shards.add_argument("--samples-per-shard", type=int, default=1000)
    shards.add_argument("--pattern", default="%05d.tar", help="shard file name pattern")

    embed = sub.add_parser("embed", help="embed WebDataset shards with OpenCLIP (Beam job; unknown options go to Beam)")
    add_embed_arguments(embed)

    demo = sub.add_parser("demo", help="offline end-to-end demo on photos that scikit-image ships")
    demo.add_argument("--out", default="demo")
    demo.add_argument("--model", default="mmembed-tiny")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    if not args.verbose:
        logging.getLogger("apache_beam").setLevel(logging.WARNING)  # Beam's INFO lines drown the job's own progress
    if extra and args.command not in ("embed", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "make-shards":
            return _make_shards(args)
        if args.command == "embed":
            return _embed(args, extra)
        return _demo(args, extra)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"mmembed {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
