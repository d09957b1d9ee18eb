"""No single sample can stop the embed job or lose its neighbours (issue 12 section 2).

One shard interleaves good samples with every kind of bad sample a new user met: a member name that
is not UTF-8, metadata Python parses but cannot store or cannot parse at all, an image that makes
Pillow raise an unusual exception, and link members. Each bad sample must be one error row naming
the shard and member and the fix, every good sample must be embedded, and the counts must reconcile
with an independent WebDataset-style count of the tar.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmembed.config import EncoderConfig
from mmembed.preprocess import sample_row
from mmembed.records import DecodedSample
from mmembed.schema import utf8_safe
from mmembed.shards import base_plus_ext
from tests.helpers import embed, read_dir
from tests.tarmaker import directory, link, sample_members, write_tar

TINY = EncoderConfig(model="mmembed-tiny", random_init=True, device="cpu", batch_size=8, seed=0)
SHARD = "mixed-000"
# An IFUNC IM file whose size header says 10.5*10: Pillow raises TypeError when it loads the pixels.
MALFORMED_IM = (b"Image type: RGB image\r\nImage size (x*y): 10.5*10\r\n\x1a").ljust(512, b"\0") + bytes(300)


def with_member(key: str, ext: str, data: bytes) -> list[tuple[str, bytes]]:
    """A valid sample with its ``ext`` member's bytes replaced."""
    return [(name, data if name == f"{key}.{ext}" else value) for name, value in sample_members(key)]


# key as written in errors/ -> (code, member named in the row and its reason)
BAD = {
    "caf\\udce9": ("bad_member_name", "caf\\udce9.jpg"),
    "k03": ("bad_metadata", "k03.json"),
    "k05": ("bad_metadata", "k05.json"),
    "k06": ("bad_metadata", "k06.json"),
    "k08": ("bad_image", "k08.jpg"),
    "k09": ("link_member", "k09.jpg"),
    "k10": ("link_member", "k10.jpg"),
}
GOOD = ["k00", "k02", "k04", "k07", "k11", "k12"]


def mixed_members() -> list:
    """Good samples interleaved with every bad case, plus directory entries (which are not samples)."""
    return [
        directory("k00-dir/"),
        *sample_members("k00"),
        *sample_members("caf\udce9"),  # written as the raw byte 0xE9
        *sample_members("k02"),
        *with_member("k03", "json", b'{"a": "\\ud800"}'),
        *sample_members("k04"),
        *with_member("k05", "json", b'{"n": ' + b"9" * 5000 + b"}"),
        *with_member("k06", "json", b'{"a": ' * 50_000 + b"1" + b"}" * 50_000),
        *sample_members("k07"),
        *with_member("k08", "jpg", MALFORMED_IM),
        link("k09.jpg", "../photos/k09.jpg"),
        link("k09.txt", "../photos/k09.txt"),
        link("k10.jpg", "k00.jpg", hard=True),
        *sample_members("k10")[1:],
        directory("empty/"),
        *sample_members("k11"),
        *sample_members("k12"),
    ]


def webdataset_key_count(path: Path) -> int:
    """Samples in a tar counted independently: runs of consecutive members sharing a key, directories ignored."""
    keys: list[str] = []
    with tarfile.open(path, errors="surrogateescape") as tar:
        for info in tar:
            key = base_plus_ext(info.name)[0]
            if not info.isdir() and key is not None and (not keys or keys[-1] != key):
                keys.append(key)
    return len(keys)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    folder = tmp_path_factory.mktemp("bad")
    shard = write_tar(folder / f"{SHARD}.tar", mixed_members(), fmt=tarfile.GNU_FORMAT)
    summary = embed([str(shard)], folder / "out", TINY)
    return shard, folder / "out", summary


def test_every_good_sample_is_embedded(job: tuple[Path, Path, dict]) -> None:
    _, out, summary = job
    embedded = read_dir(out / "embeddings")
    assert sorted(embedded.column("key").to_pylist()) == GOOD
    assert summary["embedded"] == len(GOOD)


def test_each_bad_sample_is_one_error_row_naming_shard_member_and_fix(job: tuple[Path, Path, dict]) -> None:
    _, out, _ = job
    rows = pq.read_table(out / "errors" / f"{SHARD}.parquet").to_pylist()
    assert sorted(row["key"] for row in rows) == sorted(BAD)
    for row in rows:
        code, member = BAD[row["key"]]
        assert (row["code"], row["member"]) == (code, member)
        assert f"shard {SHARD}" in row["reason"] and member in row["reason"] and "fix:" in row["reason"]


def test_counts_reconcile_with_the_samples_in_the_tar(job: tuple[Path, Path, dict]) -> None:
    shard, _, summary = job
    assert webdataset_key_count(shard) == len(GOOD) + len(BAD)
    assert summary["samples_in"] == webdataset_key_count(shard) == summary["embedded"] + summary["errors"]
    assert summary["shard_errors"] == {} and summary["failed_shards"] == []
    assert summary["errors_by_reason"] == {"bad_image": 1, "bad_member_name": 1, "bad_metadata": 3, "link_member": 2}


def test_text_that_is_not_utf8_is_escaped_not_a_writer_crash() -> None:
    assert utf8_safe("caf\udce9") == "caf\\udce9"
    assert utf8_safe("café ok") == "café ok" and utf8_safe(None) is None
    sample = DecodedSample(
        shard="s",
        key="k\udce9",
        offset=512,
        image_member="k\udce9.jpg",
        image=None,
        caption="x\ud800",
        metadata={"a": "\ud800"},
        width=1,
        height=1,
        sha256=None,
        phash=None,
    )
    row = sample_row(sample)
    assert (row["key"], row["caption"]) == ("k\\udce9", "x\\ud800")
    assert json.loads(row["metadata"]) == {"a": "\ud800"}  # the escape is JSON's own: the value round-trips
    pq.write_table(pa.Table.from_pylist([row]), io.BytesIO())
