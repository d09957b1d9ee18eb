"""Thumbnail seek-reads, the LRU cache, config checks and the command-line arguments, without a server."""

from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from mmembed.commands.serve import add_arguments, config_from_args
from mmembed.config import ConfigError
from mmembed.serve.config import ServeConfig
from mmembed.serve.thumbnails import LRUCache, ThumbnailStore, ThumbnailUnavailable, read_member_at
from tests.tarmaker import jpeg_bytes, write_tar


class CountingFile(io.FileIO):
    """A file that counts the bytes read through it."""

    read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


def open_binary(url: str) -> io.BufferedReader:
    return open(url, "rb")  # noqa: SIM115 - the store closes it


def data_offsets(path: Path) -> dict[str, int]:
    with tarfile.open(path) as tar:
        return {m.name: m.offset_data for m in tar.getmembers()}


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    members = [
        ("000000.txt", b"first caption"),
        ("000000.jpg", jpeg_bytes("astronaut", 300)),
        ("000001.txt", b"second caption"),
        ("000001.jpg", jpeg_bytes("chelsea", 200)),
        ("000002.jpg", b"this is not an image"),
    ]
    return write_tar(tmp_path / "00007.tar", members)


def test_a_member_is_read_with_one_seek_and_no_scan(shard: Path) -> None:
    offset = data_offsets(shard)["000001.jpg"]
    expected = jpeg_bytes("chelsea", 200)
    with CountingFile(shard) as f:
        assert read_member_at(f, offset, "000001") == expected
        assert f.read_bytes == 512 + len(expected)  # the header before the data, then the data: nothing else


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_member_names_are_read_too(tmp_path: Path, fmt: int) -> None:
    key = "dir/" + "k" * 150
    path = tmp_path / "long.tar"
    with tarfile.open(path, "w", format=fmt) as tar:  # a long-name header (GNU) or pax record precedes the member
        data = jpeg_bytes("coffee", 64)
        info = tarfile.TarInfo(f"{key}.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as f:
        assert read_member_at(f, data_offsets(path)[f"{key}.jpg"], key) == data


def test_an_offset_that_no_longer_matches_is_refused(shard: Path) -> None:
    offsets = data_offsets(shard)
    with open(shard, "rb") as f:
        with pytest.raises(ThumbnailUnavailable, match="changed since it was embedded"):
            read_member_at(f, offsets["000001.jpg"], "000000")  # another sample's member
        with pytest.raises(ThumbnailUnavailable, match="no tar header"):
            read_member_at(f, offsets["000001.jpg"] + 512, "000001")  # inside the data
        with pytest.raises(ThumbnailUnavailable, match="not the start"):
            read_member_at(f, 700, "000001")


def test_store_resizes_caches_and_explains_failures(shard: Path) -> None:
    offsets = data_offsets(shard)
    store = ThumbnailStore({"00007": str(shard)}, cache_items=1, opener=open_binary)
    thumb, cached = store.get("00007", offsets["000000.jpg"], "000000", 64)
    assert not cached and max(Image.open(io.BytesIO(thumb)).size) == 64
    assert store.get("00007", offsets["000000.jpg"], "000000", 64) == (thumb, True)
    store.get("00007", offsets["000001.jpg"], "000001", 64)  # evicts the first (cache of one)
    assert store.get("00007", offsets["000000.jpg"], "000000", 64)[1] is False
    with pytest.raises(ThumbnailUnavailable, match="not a decodable image"):
        store.get("00007", offsets["000002.jpg"], "000002", 64)
    with pytest.raises(ThumbnailUnavailable, match="--shards"):
        store.get("00008", 512, "000000", 64)
    missing = ThumbnailStore({"00007": str(shard.with_name("gone.tar"))}, 4, open_binary)
    with pytest.raises(ThumbnailUnavailable, match="cannot read shard"):
        missing.get("00007", 512, "000000", 64)


def test_lru_cache_keeps_the_most_recent() -> None:
    cache = LRUCache(2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.get("a") == b"1"
    cache.put("c", b"3")  # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("a") == b"1" and cache.get("c") == b"3"
    assert (cache.hits, cache.misses, len(cache)) == (3, 1, 2)
    off = LRUCache(0)
    off.put("a", b"1")
    assert off.get("a") is None


@pytest.mark.parametrize(
    "change",
    [
        {"port": 70000},
        {"max_k": 0},
        {"max_k": 10**6},
        {"max_upload_bytes": 10},
        {"max_query_chars": 0},
        {"thumbnail_size": 4},
        {"device": "tpu"},
        {"threads": 0},
        {"host": ""},
    ],
)
def test_config_refuses_bad_limits(change: dict) -> None:
    with pytest.raises(ConfigError, match="serve:"):
        ServeConfig(index_dir="idx", **change)


def test_command_line_arguments_make_a_config() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--index", "idx", "--shards", "a/*.tar", "--shards", "b/{0..3}.tar", "--port", "9000", "--max-k", "20"]
    )
    config = config_from_args(args)
    assert config == ServeConfig(index_dir="idx", shards=("a/*.tar", "b/{0..3}.tar"), port=9000, max_k=20)
    assert config.host == "127.0.0.1"
