"""Three small source shards with awkward layouts, embedded with the tiny model and indexed once per session.

The layouts an export must copy faithfully: members stored before the image (``.txt``/``.json`` first), a
member of a kind the embed job ignores (``.cls``), a sample without an image (an embed error, so not indexed)
between indexed ones, a long key inside a folder (pax headers), and the same key in several shards.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmembed.index import IndexBuildConfig, build_index
from tests.conftest import TINY
from tests.helpers import embed
from tests.photos import load_photo
from tests.tarmaker import image_bytes, jpeg_bytes, write_tar

LONG_KEY = "nested/" + "k" * 120


def meta(src: str, n: int) -> bytes:
    return json.dumps({"src": src, "n": n}).encode()


def png(photo: str) -> bytes:
    image = load_photo(photo).convert("RGB")
    image.thumbnail((96, 96))
    return image_bytes(image, "PNG")


SOURCES: dict[str, tuple[int, list[tuple[str, bytes]]]] = {
    "a-00000": (
        tarfile.USTAR_FORMAT,
        [
            ("000000.txt", b"portrait of an astronaut"),
            ("000000.jpg", jpeg_bytes("astronaut")),
            ("000000.json", meta("a", 0)),
            ("000001.json", meta("a", 1)),
            ("000001.png", png("coffee")),
            ("000001.txt", b"a cup of coffee"),
            ("000001.cls", b"7"),
            ("000002.txt", b"a caption without its image"),
            ("000003.jpg", jpeg_bytes("chelsea")),
            ("000003.txt", b"an orange tabby cat"),
        ],
    ),
    "a-00001": (
        tarfile.PAX_FORMAT,
        [
            ("000000.jpg", jpeg_bytes("rocket")),
            ("000000.txt", b"a rocket on the launch pad"),
            (f"{LONG_KEY}.txt", b"silhouette of a horse"),
            (f"{LONG_KEY}.jpg", jpeg_bytes("horse")),
            ("000005.txt", b"a man with a camera"),
            ("000005.jpg", jpeg_bytes("camera")),
            ("000005.json", meta("a", 5)),
        ],
    ),
    "b-00000": (
        tarfile.USTAR_FORMAT,
        [
            ("000000.jpg", jpeg_bytes("moon")),
            ("000000.txt", b"grey surface of the moon"),
            ("000000.json", meta("b", 0)),
            ("000001.json", meta("b", 1)),
            ("000001.txt", b"old coins"),
            ("000001.jpg", jpeg_bytes("coins")),
            ("000002.png", png("brick")),
            ("000002.txt", b"a red brick wall"),
            ("000002.json", meta("b", 2)),
        ],
    ),
}
INDEXED = 9  # every sample but a-00000/000002, which has no image


@dataclass(frozen=True)
class Dataset:
    """The source shards (``shards/<name>.tar``) and the index built over them."""

    root: Path
    index: Path

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    @property
    def pattern(self) -> str:
        return str(self.shard_dir / "*.tar")


def write_sources(folder: Path) -> list[str]:
    """The source shards written into ``folder``; their paths."""
    return [str(write_tar(folder / f"{name}.tar", members, fmt=fmt)) for name, (fmt, members) in SOURCES.items()]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("export")
    shards = write_sources(root / "shards")
    summary = embed(shards, root / "emb", TINY)
    assert summary["embedded"] == INDEXED, summary
    build_index(IndexBuildConfig(embeddings_dir=str(root / "emb"), out_dir=str(root / "index")))
    return Dataset(root, root / "index")


def tar_samples(data: bytes) -> dict[str, list[tuple[str, bytes]]]:
    """A tar's members grouped by key (WebDataset's rule: the name up to the first dot of its file name), each
    sample's (name, bytes) in tar order; read with tarfile alone, independently of the code under test."""
    samples: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for info in tar:
            folder, base = posixpath.split(info.name)
            key = posixpath.join(folder, base.split(".", 1)[0])
            samples.setdefault(key, []).append((info.name, tar.extractfile(info).read()))
    return samples


def source_samples() -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    """(shard, key) -> the source sample's members, from the definitions above."""
    found = {}
    for shard, (_, members) in SOURCES.items():
        for name, data in members:
            folder, base = posixpath.split(name)
            found.setdefault((shard, posixpath.join(folder, base.split(".", 1)[0])), []).append((name, data))
    return found
