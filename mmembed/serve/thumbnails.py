"""Thumbnails read straight from the tar shards: one seek to the offset recorded at embed time, no scan.

The embed job records ``offset``, the byte offset of the image member's data inside its (uncompressed) tar.
The 512-byte ustar header right before it gives the member's size and name, so reading an image costs one
seek and two reads. A gzip-compressed shard (``.tar.gz``) cannot be seeked: its images get no thumbnail
(``ThumbnailUnavailable``, served as a 404 with that reason) rather than a decompression of the shard up to
the offset on every cache miss. Encoded thumbnails are kept in a bounded LRU cache.
"""

from __future__ import annotations

import io
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import IO

from mmembed.config import DecodeConfig
from mmembed.decode import DecodeError, decode_image

TAR_BLOCK = 512
GZIP_SUFFIXES = (".tar.gz", ".tgz")
MAX_MEMBER_BYTES = 256 * 1024 * 1024  # a header claiming more is not an image member we wrote


class ThumbnailUnavailable(LookupError):
    """No thumbnail for this sample; the message says why and what to do."""


class LRUCache:
    """A thread-safe least-recently-used map with a fixed number of entries (0 disables it)."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[object, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: object) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: object, value: bytes) -> None:
        if self.max_items == 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def read_member_at(f: IO[bytes], offset: int, key: str) -> bytes:
    """The bytes of the tar member whose data starts at ``offset``, sized from the header just before it."""
    if offset < TAR_BLOCK or offset % TAR_BLOCK:
        raise ThumbnailUnavailable(f"sample {key}: offset {offset} is not the start of a tar member's data")
    f.seek(offset - TAR_BLOCK)
    header = f.read(TAR_BLOCK)
    try:
        info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        raise ThumbnailUnavailable(
            f"sample {key}: no tar header before offset {offset} ({exc}); the shard changed since it was "
            "embedded (fix: re-embed it, or point --shards at the files that were embedded)"
        ) from None
    if not info.isreg() or info.size > MAX_MEMBER_BYTES or not _names_match(info.name, key):
        raise ThumbnailUnavailable(
            f"sample {key}: the tar member at offset {offset} is {info.name!r} ({info.size} bytes), not this "
            "sample's image; the shard changed since it was embedded (fix: re-embed it, or pass the right --shards)"
        )
    data = f.read(info.size)
    if len(data) != info.size:
        raise ThumbnailUnavailable(f"sample {key}: shard ends after {len(data)} of {info.size} image bytes")
    return data


def _names_match(member: str, key: str) -> bool:
    """The member is ``<key>.<ext>``; a long name (GNU/pax) is cut to the header's name field, a prefix of it."""
    return member.startswith(f"{key}.") or (len(member) >= 99 and f"{key}.".startswith(member[:99]))


def make_thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    """Image bytes -> a JPEG whose longest side is at most ``size`` (decoded with the bomb guard)."""
    image = decode_image(data, max_pixels)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()


class ThumbnailStore:
    """Shard name -> URL; (shard, offset, size) -> cached JPEG thumbnail."""

    def __init__(
        self,
        shard_urls: dict[str, str],
        cache_items: int,
        opener: Callable[[str], IO[bytes]],
        max_pixels: int = DecodeConfig().max_image_pixels,
    ) -> None:
        self.shard_urls = dict(shard_urls)
        self.cache = LRUCache(cache_items)
        self.opener = opener
        self.max_pixels = max_pixels  # what the embed job accepted, so every indexed image has a thumbnail

    def has_shard(self, shard: str) -> bool:
        return shard in self.shard_urls

    def get(self, shard: str, offset: int, key: str, size: int) -> tuple[bytes, bool]:
        """(JPEG thumbnail of the image member at ``offset`` in ``shard``, whether it came from the cache).

        Raises ThumbnailUnavailable when there is none (unknown or gzip shard, shard changed, not decodable).
        """
        cache_key = (shard, offset, size)
        cached = self.cache.get(cache_key)
        if cached is not None:
            return cached, True
        url = self.shard_urls.get(shard)
        if url is None:
            raise ThumbnailUnavailable(
                f"sample {key}: the server does not know where shard {shard!r} is; start it with "
                "--shards 'path/to/shards/*.tar' (the shards that were embedded)"
            )
        if url.endswith(GZIP_SUFFIXES):
            raise ThumbnailUnavailable(
                f"sample {key}: shard {url} is gzip-compressed, which cannot be seeked; thumbnails need "
                "uncompressed .tar shards (fix: gunzip the shards and pass the .tar files with --shards)"
            )
        try:
            with self.opener(url) as f:
                data = read_member_at(f, offset, key)
        except (OSError, ValueError) as exc:  # missing or unreadable file (Beam's errors are OSErrors)
            raise ThumbnailUnavailable(f"sample {key}: cannot read shard {url} ({exc})") from None
        try:
            thumb = make_thumbnail(data, size, self.max_pixels)
        except DecodeError as exc:
            raise ThumbnailUnavailable(f"sample {key}: {exc}") from None
        self.cache.put(cache_key, thumb)
        return thumb, False
