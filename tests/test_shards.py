"""Shard URL handling and streaming tar reading, on valid and broken tars with real image bytes."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmembed.records import RawSample, SampleError
from mmembed.schema import errors_table
from mmembed.shards import check_unique_names, expand_braces, iter_shard_samples, shard_name
from tests.tarmaker import directory, link, sample_members, write_tar

EXTS = ("jpg", "png")


def read(path: Path) -> list[RawSample | SampleError]:
    with open(path, "rb") as f:
        return list(iter_shard_samples(f, path.name.split(".")[0], EXTS))


def test_expand_braces_keeps_order_and_drops_duplicates() -> None:
    assert expand_braces("d/{00..02}.tar") == ["d/00.tar", "d/01.tar", "d/02.tar"]
    assert expand_braces(["a.tar", "{a,b}.tar"]) == ["a.tar", "b.tar"]


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("a/b/00001.tar", "00001"),
        ("gs://bucket/x/shard-7.tar.gz", "shard-7"),
        ("s3://b/y.tgz", "y"),
        ("plain", "plain"),
    ],
)
def test_shard_name_strips_tar_suffixes(url: str, name: str) -> None:
    assert shard_name(url) == name


def test_same_shard_name_in_two_folders_is_refused() -> None:
    with pytest.raises(ValueError, match="same name '0001'"):
        check_unique_names(["a/0001.tar", "b/0001.tar"])


@pytest.mark.parametrize("gzip", [False, True])
def test_valid_shard_groups_members_by_key_with_offsets(tmp_path: Path, gzip: bool) -> None:
    path = write_tar(
        tmp_path / ("s.tar.gz" if gzip else "s.tar"), sample_members("k0") + sample_members("k1", "coffee"), gzip
    )
    items = read(path)
    assert [type(i) for i in items] == [RawSample, RawSample]
    assert [i.key for i in items] == ["k0", "k1"]
    assert set(items[0].members) == {"jpg", "txt", "json"}
    # The recorded offset points at the image member's data in the uncompressed tar.
    if not gzip:
        data = path.read_bytes()
        jpg = items[1].members["jpg"]
        assert data[items[1].member_offsets["jpg"] : items[1].member_offsets["jpg"] + len(jpg)] == jpg


def test_not_a_tar_is_one_shard_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.tar"
    path.write_bytes(b"this is a text file, not a tar archive\n" * 40)
    items = read(path)
    assert len(items) == 1 and items[0].is_shard_error
    assert items[0].code == "not_a_tar" and "shard bad" in items[0].reason and "fix:" in items[0].reason


def test_empty_file_yields_no_samples_and_a_clear_shard_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.tar"
    path.write_bytes(b"")
    items = read(path)
    assert all(isinstance(i, SampleError) and i.is_shard_error for i in items)
    assert len(items) == 1


def test_empty_tar_yields_nothing(tmp_path: Path) -> None:
    assert read(write_tar(tmp_path / "e.tar", [])) == []


def test_truncated_tar_keeps_complete_samples_and_records_the_break(tmp_path: Path) -> None:
    path = write_tar(
        tmp_path / "t.tar", sample_members("k0") + sample_members("k1", "coffee") + sample_members("k2", "chelsea")
    )
    data = path.read_bytes()
    with open(path, "rb") as f:
        k2_offset = next(i for i in iter_shard_samples(f, "t", EXTS) if i.key == "k2").member_offsets["jpg"]
    path.write_bytes(data[: k2_offset + 100])  # cut inside k2's image
    items = read(path)
    samples = [i for i in items if isinstance(i, RawSample)]
    errors = [i for i in items if isinstance(i, SampleError)]
    assert [s.key for s in samples] == ["k0", "k1"]
    assert [(e.key, e.code) for e in errors] == [("k2", "incomplete_sample"), (None, "truncated_shard")]
    assert "k2.jpg" in errors[1].reason and "re-create" in errors[1].reason


def test_duplicate_key_later_in_shard_is_an_error_and_first_copy_kept(tmp_path: Path) -> None:
    members = sample_members("k0") + sample_members("k1") + sample_members("k0", caption="again")
    items = read(write_tar(tmp_path / "d.tar", members))
    assert [(type(i).__name__, i.key) for i in items] == [
        ("RawSample", "k0"),
        ("RawSample", "k1"),
        ("SampleError", "k0"),
    ]
    assert items[0].members["txt"] == b"a photo"
    assert items[2].code == "duplicate_key" and "k0" in items[2].reason


def test_caption_without_image_is_recorded(tmp_path: Path) -> None:
    members = [("k0.txt", b"only words"), *sample_members("k1")]
    items = read(write_tar(tmp_path / "n.tar", members))
    assert isinstance(items[0], SampleError) and items[0].code == "no_image" and "k0" in items[0].reason
    assert isinstance(items[1], RawSample)


def test_member_without_extension_is_recorded(tmp_path: Path) -> None:
    items = read(write_tar(tmp_path / "x.tar", [("README", b"hi"), *sample_members("k1")]))
    assert items[0].code == "no_extension" and items[0].member == "README"
    assert items[1].key == "k1"


def test_stream_is_read_once_forward_only() -> None:
    """The reader must work on a non-seekable stream (object stores, pipes)."""

    class ForwardOnly(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.inner = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
            chunk = self.inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

        def seekable(self) -> bool:
            return False

    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as t:
        for name, data in sample_members("k0"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    items = list(iter_shard_samples(io.BufferedReader(ForwardOnly(tar.getvalue())), "s", EXTS))
    assert [i.key for i in items] == ["k0"]


def test_member_name_that_is_not_utf8_makes_its_sample_one_error(tmp_path: Path) -> None:
    """GNU tar stores names as raw bytes: 0xE9 (latin-1 'é') arrives as the lone surrogate U+DCE9."""
    members = sample_members("k0") + sample_members("caf\udce9") + sample_members("k2")
    path = write_tar(tmp_path / "n.tar", members, fmt=tarfile.GNU_FORMAT)
    assert b"caf\xe9.jpg" in path.read_bytes()
    items = read(path)
    assert [(type(i).__name__, i.key) for i in items] == [
        ("RawSample", "k0"),
        ("SampleError", "caf\\udce9"),
        ("RawSample", "k2"),
    ]
    error = items[1]
    assert (error.code, error.stage, error.member) == ("bad_member_name", "read", "caf\\udce9.jpg")
    assert "shard n: member caf\\udce9.jpg:" in error.reason and "b'caf\\xe9.jpg'" in error.reason
    assert "fix: rename the member to UTF-8" in error.reason
    table = errors_table([error])
    pq.write_table(table, io.BytesIO())  # written as UTF-8 without raising
    assert table.column("key").to_pylist() == ["caf\\udce9"]


def test_non_utf8_byte_in_one_extension_fails_the_whole_sample(tmp_path: Path) -> None:
    members = [*sample_members("k0"), ("k0.j\udce9son", b"{}"), *sample_members("k1")]
    items = read(write_tar(tmp_path / "e.tar", members, fmt=tarfile.GNU_FORMAT))
    assert [(type(i).__name__, i.key, getattr(i, "code", None)) for i in items] == [
        ("SampleError", "k0", "bad_member_name"),
        ("RawSample", "k1", None),
    ]


@pytest.mark.parametrize("hard", [False, True], ids=["symlink", "hardlink"])
def test_sample_of_only_links_is_exactly_one_error(tmp_path: Path, hard: bool) -> None:
    members = [
        *sample_members("k0"),
        link("k1.jpg", "k0.jpg", hard=hard),
        link("k1.txt", "k0.txt", hard=hard),
        *sample_members("k2"),
    ]
    items = read(write_tar(tmp_path / "l.tar", members))
    assert [(type(i).__name__, i.key) for i in items] == [
        ("RawSample", "k0"),
        ("SampleError", "k1"),
        ("RawSample", "k2"),
    ]
    error = items[1]
    assert (error.code, error.stage, error.member) == ("link_member", "read", "k1.jpg")
    kind, option = ("hard", "--hard-dereference") if hard else ("symbolic", "--dereference")
    assert f"shard l: member k1.jpg: a {kind} link to k0.jpg" in error.reason
    assert "fix: store the file itself" in error.reason and option in error.reason


def test_linked_image_beside_good_caption_and_metadata_is_the_samples_error(tmp_path: Path) -> None:
    good = sample_members("k1")
    members = [link("k1.jpg", "/photos/k1.jpg"), *good[1:], *sample_members("k2")]
    items = read(write_tar(tmp_path / "i.tar", members))
    assert [(type(i).__name__, i.key, getattr(i, "member", None)) for i in items] == [
        ("SampleError", "k1", "k1.jpg"),
        ("RawSample", "k2", None),
    ]


def test_special_member_is_recorded(tmp_path: Path) -> None:
    fifo = tarfile.TarInfo("k1.jpg")
    fifo.type = tarfile.FIFOTYPE
    items = read(write_tar(tmp_path / "f.tar", [fifo, ("k1.txt", b"x"), *sample_members("k2")]))
    assert [(i.key, getattr(i, "code", None)) for i in items] == [("k1", "special_member"), ("k2", None)]
    assert "a FIFO, not a regular file" in items[0].reason and "fix:" in items[0].reason


def test_directory_entries_are_skipped_silently(tmp_path: Path) -> None:
    members = [directory("d"), *[(f"d/{n}", data) for n, data in sample_members("k0")], directory("d/e/")]
    items = read(write_tar(tmp_path / "d.tar", [*members, *sample_members("k1")]))
    assert [(type(i).__name__, i.key) for i in items] == [("RawSample", "d/k0"), ("RawSample", "k1")]


@pytest.mark.parametrize(
    "name", ["a.jpg", "dir/a.b.txt", "x/y/z.tar.gz", "noext", "dir.with.dots/key.json", ".hidden", "a.", "d/.e.f"]
)
def test_member_keys_split_as_webdataset_splits_them(name: str) -> None:
    from webdataset.tariterators import base_plus_ext as webdataset_rule

    from mmembed.shards import base_plus_ext

    assert base_plus_ext(name) == webdataset_rule(name)
