"""``read_sample_at``: every member of one sample read at its recorded image offset, members stored before the
image included, other samples' data never read, and every mismatch a SampleUnavailable naming the sample."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from mmembed.tarread import SampleUnavailable, read_sample_at
from tests.tarmaker import link, write_tar

BIG = bytes(range(256)) * 4096  # 1 MiB of another sample's data, which a read must skip


class CountingFile(io.BytesIO):
    """A seekable file that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def offsets(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (header offset, data offset)."""
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


@pytest.fixture
def shard(tmp_path: Path) -> Path:
    return write_tar(
        tmp_path / "s.tar",
        [
            ("a.jpg", b"image a"),
            ("a.bin", BIG),
            ("b.json", b'{"n": 1}'),
            ("b.txt", b"caption b"),
            ("b.png", b"image b"),
            ("b.cls", b"3"),
            ("c.jpg", b"image c"),
        ],
    )


def test_members_before_and_after_the_image_are_read_and_nothing_else(shard: Path) -> None:
    where = offsets(shard)
    expected = [("b.json", b'{"n": 1}'), ("b.txt", b"caption b"), ("b.png", b"image b"), ("b.cls", b"3")]
    f = CountingFile(shard.read_bytes())
    # the walk starts at the previous sample's image header and skips its 1 MiB member
    assert read_sample_at(f, where["b.png"][1], "b", start=where["a.jpg"][0]) == expected
    assert f.bytes_read < 16 * 1024
    assert read_sample_at(io.BytesIO(shard.read_bytes()), where["b.png"][1], "b") == expected  # from the start
    assert read_sample_at(io.BytesIO(shard.read_bytes()), where["c.jpg"][1], "c", where["b.png"][0]) == [
        ("c.jpg", b"image c")
    ]


def test_long_names_in_pax_headers(tmp_path: Path) -> None:
    key = "dir/" + "k" * 150
    path = write_tar(
        tmp_path / "long.tar", [("a.jpg", b"a"), (f"{key}.txt", b"t"), (f"{key}.jpg", b"i")], fmt=tarfile.PAX_FORMAT
    )
    found = read_sample_at(io.BytesIO(path.read_bytes()), offsets(path)[f"{key}.jpg"][1], key)
    assert found == [(f"{key}.txt", b"t"), (f"{key}.jpg", b"i")]


def test_mismatches_name_the_sample_and_the_cause(shard: Path, tmp_path: Path) -> None:
    where = offsets(shard)
    data = shard.read_bytes()
    with pytest.raises(SampleUnavailable, match="sample a: the tar member at offset .* is 'b.png'.*changed since"):
        read_sample_at(io.BytesIO(data), where["b.png"][1], "a")
    with pytest.raises(SampleUnavailable, match="sample b: no tar header"):
        read_sample_at(io.BytesIO(data[: where["b.png"][0]]), where["b.png"][1], "b")  # cut before the image
    with pytest.raises(SampleUnavailable, match="sample b: .*cut or damaged at byte"):
        read_sample_at(io.BytesIO(data[: where["b.cls"][1] - 1]), where["b.png"][1], "b")  # in b.cls's header
    with pytest.raises(SampleUnavailable, match="sample b: .*unexpected end of data.*changed since"):
        read_sample_at(io.BytesIO(data[: where["b.png"][1] + 3]), where["b.png"][1], "b")  # in b.png's data
    with pytest.raises(SampleUnavailable, match="not the start of a tar member's data"):
        read_sample_at(io.BytesIO(data), 700, "b")
    linked = write_tar(tmp_path / "link.tar", [("a.jpg", b"a"), link("a.txt", "elsewhere.txt")])
    with pytest.raises(SampleUnavailable, match="sample a: member a.txt is a link"):
        read_sample_at(io.BytesIO(linked.read_bytes()), offsets(linked)["a.jpg"][1], "a")
