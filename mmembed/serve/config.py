"""ServeConfig: everything ``mmembed serve`` needs, as one frozen value with its limits checked up front."""

from __future__ import annotations

from dataclasses import dataclass

from mmembed.config import DEVICES, MAX_K, ConfigError

MiB = 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP server over one index dir.

    index_dir: an ``mmembed index`` output dir: a local path or an object-store URL (``s3://``, ``gs://``).
    shards: shard URLs or patterns (globs, ``{a..b}`` braces; local or object store) of the tar shards that were
        embedded; thumbnails are range-read from them, matched to the index by shard name (file name without
        ``.tar``). Nothing records where the shards were, so without them search works and thumbnails answer 404
        saying to pass ``--shards``.
    host / port: where to listen; loopback unless told otherwise.
    max_k: the most results one query may ask for.
    max_upload_bytes: the largest request body (an uploaded image plus its form fields).
    max_query_chars: the longest text query.
    max_image_pixels: decompression-bomb guard for uploads (width x height, checked before decoding).
    thumbnail_size / detail_size: longest side of the grid thumbnails and of the detail view's image.
    thumbnail_cache_items: encoded thumbnails kept in memory (LRU).
    checkpoint: where the recorded model's checkpoint file is now, if it moved since embedding.
    device: where queries are encoded ('cpu' serves small models fastest; 'cuda' must exist when asked for).
    threads: torch and faiss threads per call; requests are served concurrently on top of that.
    """

    index_dir: str
    shards: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8080
    max_k: int = 100
    max_upload_bytes: int = 10 * MiB
    max_query_chars: int = 1000
    max_image_pixels: int = 40_000_000
    thumbnail_size: int = 256
    detail_size: int = 768
    thumbnail_cache_items: int = 2048
    checkpoint: str | None = None
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.shards, str):
            object.__setattr__(self, "shards", (self.shards,))
        object.__setattr__(self, "shards", tuple(self.shards))
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
