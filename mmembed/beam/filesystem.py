"""Moved: file access is ``mmembed.storage``, shard listing ``mmembed.shards`` (kept until every caller moves)."""

from mmembed.shards import list_shards
from mmembed.storage import open_read, write_atomic

__all__ = ["list_shards", "open_read", "write_atomic"]
