"""Thumbnails read straight from the tar shards, local or in an object store: range reads at the offset
recorded at embed time, never a scan and never a whole-shard download.

The reading itself is ``mmembed.tarread`` (shared with ``mmembed export``): the embed job records ``offset``,
the byte offset of the image member's data inside its (uncompressed) tar, and the 512-byte ustar header right
before it gives the member's size and name. One range read takes the header and the first ``FIRST_READ`` bytes
after it (most images fit: one request, one round trip to an object store); a larger image costs a second range
read for the rest. Every read goes through ``mmembed.storage.read_bytes``:
a ranged GET on ``s3://`` / ``gs://``, a seek and read on a local file. A gzip-compressed shard (``.tar.gz``)
cannot be seeked: its images get no thumbnail (``SampleUnavailable``, served as a 404 with that reason)
rather than a decompression of the shard up to the offset on every cache miss. Encoded thumbnails are kept in
a bounded LRU cache.

A shard that cannot be read answers with the sample and the kind of failure only (a 404 when the file, object
or bucket is missing, a 502 for any other storage failure); its URL and the storage's message go to the
server log, not to clients.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from mmembed.config import DecodeConfig
from mmembed.decode import DecodeError, decode_image
from mmembed.tarread import GZIP_SUFFIXES, SampleUnavailable, read_member, read_range

log = logging.getLogger(__name__)


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


def make_thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    """Image bytes -> a JPEG whose longest side is at most ``size`` (decoded with the bomb guard)."""
    image = decode_image(data, max_pixels)
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()


class ThumbnailStore:
    """Shard name -> URL; (shard, offset, size) -> cached JPEG thumbnail, read by ranges through ``reader``."""

    def __init__(
        self,
        shard_urls: dict[str, str],
        cache_items: int,
        reader: Callable[[str, int, int], bytes] = read_range,
        max_pixels: int = DecodeConfig().max_image_pixels,
    ) -> None:
        self.shard_urls = dict(shard_urls)
        self.cache = LRUCache(cache_items)
        self.reader = reader
        self.max_pixels = max_pixels  # what the embed job accepted, so every indexed image has a thumbnail

    def has_shard(self, shard: str) -> bool:
        return shard in self.shard_urls

    def get(self, shard: str, offset: int, key: str, size: int) -> tuple[bytes, bool]:
        """(JPEG thumbnail of the image member at ``offset`` in ``shard``, whether it came from the cache).

        Raises SampleUnavailable when there is none (unknown, gzip or unreadable shard, shard changed,
        not decodable).
        """
        cache_key = (shard, offset, size)
        cached = self.cache.get(cache_key)
        if cached is not None:
            return cached, True
        data = self.image(shard, offset, key)
        try:
            thumb = make_thumbnail(data, size, self.max_pixels)
        except DecodeError as exc:
            raise SampleUnavailable(f"sample {key}: {exc}") from None
        self.cache.put(cache_key, thumb)
        return thumb, False

    def image(self, shard: str, offset: int, key: str) -> bytes:
        """The stored bytes of the image member at ``offset`` in ``shard`` (range reads, never the whole shard)."""
        url = self.shard_urls.get(shard)
        if url is None:
            raise SampleUnavailable(
                f"sample {key}: the server does not know where shard {shard!r} is; start it with "
                "--shards 'path/to/shards/*.tar' (the shards that were embedded)"
            )
        if url.endswith(GZIP_SUFFIXES):
            raise SampleUnavailable(
                f"sample {key}: shard {shard!r} is gzip-compressed, which cannot be seeked; thumbnails need "
                "uncompressed .tar shards (fix: gunzip the shards and pass the .tar files with --shards)"
            )
        try:
            return read_member(lambda start, end: self.reader(url, start, end), offset, key)
        except (OSError, ValueError) as exc:
            raise _unreadable(shard, key, url, exc) from None


def _unreadable(shard: str, key: str, url: str, exc: Exception) -> SampleUnavailable:
    """The client's error for a shard that could not be read: the sample and the kind of failure, no URL and
    no storage message (they may name buckets and paths); the log gets both, for the operator."""
    log.warning("sample %s: cannot read shard %s: %s", key, url, exc)
    if isinstance(exc, FileNotFoundError):
        return SampleUnavailable(
            f"sample {key}: cannot read shard {shard!r}: its file, object or bucket is missing from the storage "
            "(fix: restore it, or restart the server with --shards pointing at the shards that were embedded; "
            "the server log names the URL)"
        )
    return SampleUnavailable(
        f"sample {key}: cannot read shard {shard!r}: the storage failed ({type(exc).__name__}); try again, "
        "and if it persists see the server log",
        status=502,
    )
