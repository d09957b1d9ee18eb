"""Thumbnail range reads, the LRU cache, shard listing, config checks and the command-line arguments, without a
server."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from mmembed.config import ConfigError
from mmembed.options import Parser
from mmembed.serve.config import ServeConfig
from mmembed.serve.service import shard_map
from mmembed.serve.thumbnails import LRUCache, ThumbnailStore
from mmembed.stages import add_stage_options, config_of, stage
from mmembed.tarread import FIRST_READ, SampleUnavailable, read_member, read_member_at, read_range
from tests.tarmaker import jpeg_bytes, write_tar


class RangeLog:
    """A range reader over one file that records every range asked for and the bytes it returned."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ranges: list[tuple[int, int]] = []
        self.returned = 0

    def __call__(self, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        data = read_range(str(self.path), start, end)
        self.returned += len(data)
        return data


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


def test_a_member_is_read_with_one_range_and_no_scan(shard: Path) -> None:
    offset = data_offsets(shard)["000001.jpg"]
    expected = jpeg_bytes("chelsea", 200)
    reads = RangeLog(shard)
    assert read_member(reads, offset, "000001") == expected
    assert reads.ranges == [(offset - 512, offset + FIRST_READ)]  # the header before the data and the data
    assert reads.returned < shard.stat().st_size  # the rest of the shard (other samples) was never read


def test_a_large_member_takes_a_second_range_for_its_rest(tmp_path: Path) -> None:
    big = jpeg_bytes("astronaut", 900, quality=100)
    assert len(big) > FIRST_READ  # the case under test
    path = write_tar(tmp_path / "big.tar", [("000000.jpg", big), ("000001.jpg", jpeg_bytes("coffee", 64))])
    offset = data_offsets(path)["000000.jpg"]
    reads = RangeLog(path)
    assert read_member(reads, offset, "000000") == big
    assert reads.ranges == [(offset - 512, offset + FIRST_READ), (offset + FIRST_READ, offset + len(big))]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_member_names_are_read_too(tmp_path: Path, fmt: int) -> None:
    key = "dir/" + "k" * 150
    path = tmp_path / "long.tar"
    with tarfile.open(path, "w", format=fmt) as tar:  # a long-name header (GNU) or pax record precedes the member
        data = jpeg_bytes("coffee", 64)
        info = tarfile.TarInfo(f"{key}.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert read_member(RangeLog(path), data_offsets(path)[f"{key}.jpg"], key) == data
    with open(path, "rb") as f:  # the same from an open file
        assert read_member_at(f, data_offsets(path)[f"{key}.jpg"], key) == data


def test_an_offset_that_no_longer_matches_is_refused(shard: Path) -> None:
    offsets = data_offsets(shard)
    reads = RangeLog(shard)
    with pytest.raises(SampleUnavailable, match="changed since it was embedded"):
        read_member(reads, offsets["000001.jpg"], "000000")  # another sample's member
    with pytest.raises(SampleUnavailable, match="no tar header"):
        read_member(reads, offsets["000001.jpg"] + 512, "000001")  # inside the data
    with pytest.raises(SampleUnavailable, match="not the start"):
        read_member(reads, 700, "000001")
    with pytest.raises(SampleUnavailable, match="no tar header"):
        read_member(reads, 512 * 10**6, "000001")  # beyond the end: the shard was cut since


def test_store_resizes_caches_and_explains_failures(shard: Path) -> None:
    offsets = data_offsets(shard)
    store = ThumbnailStore({"00007": str(shard)}, cache_items=1)
    thumb, cached = store.get("00007", offsets["000000.jpg"], "000000", 64)
    assert not cached and max(Image.open(io.BytesIO(thumb)).size) == 64
    assert store.get("00007", offsets["000000.jpg"], "000000", 64) == (thumb, True)
    store.get("00007", offsets["000001.jpg"], "000001", 64)  # evicts the first (cache of one)
    assert store.get("00007", offsets["000000.jpg"], "000000", 64)[1] is False
    with pytest.raises(SampleUnavailable, match="not a decodable image"):
        store.get("00007", offsets["000002.jpg"], "000002", 64)
    with pytest.raises(SampleUnavailable, match="--shards"):
        store.get("00008", 512, "000000", 64)
    missing = ThumbnailStore({"00007": str(shard.with_name("gone.tar"))}, 4)
    with pytest.raises(SampleUnavailable, match="cannot read shard '00007': its file, object or bucket") as info:
        missing.get("00007", 512, "000000", 64)
    assert info.value.status == 404 and "gone.tar" not in str(info.value)  # the client is not told the path


def test_a_storage_failure_is_a_502_without_the_storage_message(shard: Path) -> None:
    def failing(url: str, start: int, end: int) -> bytes:
        raise PermissionError(13, f"Access Denied (while reading {url})")

    store = ThumbnailStore({"00007": "s3://private-bucket/secret/00007.tar"}, 4, failing)
    with pytest.raises(SampleUnavailable, match="the storage failed") as info:
        store.get("00007", data_offsets(shard)["000000.jpg"], "000000", 64)
    assert info.value.status == 502 and "private-bucket" not in str(info.value)


def test_shard_patterns_must_find_shards(shard: Path, tmp_path: Path) -> None:
    assert shard_map((str(tmp_path / "*.tar"),)) == {"00007": str(shard)}
    assert shard_map((str(tmp_path / "0000{7..8}.tar"),)) == {"00007": str(shard), "00008": str(tmp_path / "00008.tar")}
    with pytest.raises(ConfigError, match=r"serve --shards: shard pattern .*nothing/\*\.tar' matched no files"):
        shard_map((str(tmp_path / "nothing" / "*.tar"),))
    with pytest.raises(ConfigError, match=r"no shard of .*0000\{8\.\.9\}\.tar' exists"):
        shard_map((str(tmp_path / "0000{8..9}.tar"),))  # plain paths, none there


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
    found = stage("serve")
    parser = Parser(prog="mmembed serve")
    add_stage_options(parser, found)
    argv = ["--index", "idx", "--shards", "a/*.tar", "--shards", "b/{0..3}.tar", "c.tar", "--port", "9000"]
    config = config_of(found, parser.parse_args([*argv, "--max-k", "20", "--threads", "2"]))
    expected = ServeConfig(index_dir="idx", shards=("a/*.tar", "b/{0..3}.tar", "c.tar"), port=9000, max_k=20, threads=2)
    assert config == expected and config.host == "127.0.0.1"


def test_python_m_mmembed_serve_takes_the_same_options() -> None:
    result = subprocess.run([sys.executable, "-m", "mmembed.serve", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--torch-threads, --threads N" in text and "--shards SHARD [SHARD ...]" in text
    refused = subprocess.run(
        [sys.executable, "-m", "mmembed.serve", "--index", "idx", "--port", "70000"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "serve: port must be within 0..65535" in refused.stderr
