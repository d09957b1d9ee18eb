"""``mmembed serve``: the sub-command's arguments and handler (``register`` like ``mmembed.commands.*``)."""

from __future__ import annotations

import argparse
import sys

from mmembed.config import DEVICES, ConfigError
from mmembed.serve.config import ServeConfig

INSTALL_HINT = "mmembed serve needs the serve extra: pip install 'mmembed[serve]'"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="HTTP search API and web page over an index")
    add_arguments(parser)
    parser.set_defaults(handler=run_serve)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig(index_dir="")
    parser.add_argument(
        "--index",
        required=True,
        help="index dir written by `mmembed index`: a local path, or an s3:// or gs:// URL (fetched once into a "
        "local cache and memory-mapped)",
    )
    parser.add_argument(
        "--shards",
        action="append",
        default=[],
        help="the embedded tar shards (glob, {a..b} braces or a path, local or s3:// / gs://; repeatable), for "
        "thumbnails; matched to the index by file name without .tar. Images are read by byte ranges, never whole "
        "shards. Without it search works but thumbnails answer 404. .tar.gz shards cannot be seeked: their "
        "samples get no thumbnail",
    )
    parser.add_argument("--host", default=d.host, help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=d.port)
    parser.add_argument("--max-k", type=int, default=d.max_k, help="most results per query")
    parser.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes, help="largest image upload")
    parser.add_argument("--max-query-chars", type=int, default=d.max_query_chars, help="longest text query")
    parser.add_argument(
        "--max-image-pixels", type=int, default=d.max_image_pixels, help="decompression-bomb guard for uploads"
    )
    parser.add_argument("--thumbnail-size", type=int, default=d.thumbnail_size, help="grid thumbnail side (px)")
    parser.add_argument("--detail-size", type=int, default=d.detail_size, help="detail view image side (px)")
    parser.add_argument("--thumbnail-cache", type=int, default=d.thumbnail_cache_items, help="thumbnails cached")
    parser.add_argument("--checkpoint", help="where the recorded model's checkpoint file is now, if it moved")
    parser.add_argument("--device", default=d.device, choices=DEVICES, help="where queries are encoded")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch/faiss threads per call")


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(
        index_dir=args.index,
        shards=tuple(args.shards),
        host=args.host,
        port=args.port,
        max_k=args.max_k,
        max_upload_bytes=args.max_upload_bytes,
        max_query_chars=args.max_query_chars,
        max_image_pixels=args.max_image_pixels,
        thumbnail_size=args.thumbnail_size,
        detail_size=args.detail_size,
        thumbnail_cache_items=args.thumbnail_cache,
        checkpoint=args.checkpoint,
        device=args.device,
        threads=args.threads,
    )


def run_serve(args: argparse.Namespace, extra: list[str]) -> int:
    config = config_from_args(args)
    try:
        from mmembed.serve.server import serve
    except ImportError as exc:
        raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
    serve(config)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m mmembed.serve --index DIR ...`` (the same as ``mmembed serve``)."""
    import logging

    parser = argparse.ArgumentParser(prog="python -m mmembed.serve", description="HTTP search over an mmembed index")
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_serve(args, [])
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"mmembed serve: error: {exc}", file=sys.stderr)
        return 2
