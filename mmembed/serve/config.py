"""ServeConfig: everything ``mmembed serve`` needs, as one frozen value with its limits checked up front. Its
fields are the command's options (``mmembed.options``); light, as ``mmembed --help`` imports it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmembed.config import DEVICES, MAX_K, ConfigError
from mmembed.options import option

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP server over one index dir (an ``mmembed index`` output, local or object store), thumbnails
    range-read from the ``shards`` that were embedded. Nothing records where the shards were, so without them
    search works and thumbnails answer 404 saying to pass ``--shards``. Requests are served concurrently on top
    of the ``threads`` each call uses."""

    index_dir: str = option(
        flag="--index",
        help="index dir written by `mmembed index`: a local path, or an s3:// or gs:// URL (fetched once into a "
        "local cache and memory-mapped)",
    )
    shards: tuple[str, ...] = option(
        (),
        metavar="SHARD",
        help="the embedded tar shards (globs, {a..b} braces or paths, local or s3:// / gs://; several values, "
        "repeatable), for thumbnails; matched to the index by file name without .tar. Images are read by byte "
        "ranges, never whole shards. Without it search works but thumbnails answer 404. .tar.gz shards cannot be "
        "seeked: their samples get no thumbnail",
    )
    host: str = option("127.0.0.1", help="address to listen on (loopback unless told otherwise)")
    port: int = option(8080, help="port to listen on")
    max_k: int = option(100, metavar="N", help="most results per query")
    max_upload_bytes: int = option(10 * MiB, metavar="BYTES", help="largest image upload")
    max_query_chars: int = option(1000, metavar="N", help="longest text query")
    max_image_pixels: int = option(
        40_000_000, metavar="N", help="decompression-bomb guard for uploads (width x height, checked before decoding)"
    )
    thumbnail_size: int = option(256, metavar="PX", help="longest side of the grid thumbnails")
    detail_size: int = option(768, metavar="PX", help="longest side of the detail view's image")
    thumbnail_cache_items: int = option(
        2048, flag="--thumbnail-cache", metavar="N", help="encoded thumbnails kept in memory (LRU)"
    )
    cors_origins: tuple[str, ...] = option(
        (),
        flag="--cors-origin",
        metavar="ORIGIN",
        help="a web origin (scheme://host[:port]) whose pages may call this API, e.g. a clip-front served elsewhere; "
        "several values, repeatable; '*' for any (then any site a user visits can read the index). Default: "
        "same origin only",
    )
    checkpoint: str | None = option(None, help="where the recorded model's checkpoint file is now, if it moved")
    device: str = option(
        "cpu", choices=DEVICES, help="where queries are encoded (cpu serves small models fastest; cuda must exist)"
    )
    threads: int = option(
        1, flag="--torch-threads", aliases=("--threads",), metavar="N", help="torch and faiss threads per call"
    )

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            object.__setattr__(self, "shards", (self.shards,))
        object.__setattr__(self, "shards", tuple(self.shards))
        if isinstance(self.cors_origins, str):
            object.__setattr__(self, "cors_origins", (self.cors_origins,))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        for origin in self.cors_origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ConfigError(
                    f"serve: --cors-origin {origin!r} is not an origin; give scheme://host[:port] without a path, "
                    "e.g. --cors-origin https://example.org, or '*'"
                )
        checks = [
            (0 <= self.port <= 65535, f"port must be within 0..65535, got {self.port}"),
            (1 <= self.max_k <= MAX_K, f"max_k must be within 1..{MAX_K}, got {self.max_k}"),
            (1024 <= self.max_upload_bytes <= 1024 * MiB, "max_upload_bytes must be within 1 KiB..1 GiB"),
            (1 <= self.max_query_chars <= 100_000, "max_query_chars must be within 1..100000"),
            (self.max_image_pixels >= 1, "max_image_pixels must be >= 1"),
            (16 <= self.thumbnail_size <= 2048, f"thumbnail_size must be within 16..2048, got {self.thumbnail_size}"),
            (16 <= self.detail_size <= 2048, f"detail_size must be within 16..2048, got {self.detail_size}"),
            (self.thumbnail_cache_items >= 0, "thumbnail_cache_items must be >= 0"),
            (self.device in DEVICES, f"device {self.device!r} is not one of {DEVICES}"),
            (1 <= self.threads <= 256, f"threads must be within 1..256, got {self.threads}"),
            (bool(self.host), "host must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"serve: {message}")

    @property
    def max_body_bytes(self) -> int:
        """The request body limit: the upload plus room for the multipart envelope and small fields."""
        return self.max_upload_bytes + 64 * 1024
