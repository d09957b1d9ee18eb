"""A sample is (shard, key): two shards that hold the same keys are indexed, searched and served as different
samples, each hit linking to its own metadata and image."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat

from mmembed.index import IndexBuildConfig, build_index
from mmembed.makeshards import ShardSpec, samples_from_folder, write_shards
from mmembed.search import Searcher
from mmembed.serve.config import ServeConfig
from mmembed.serve.server import running
from tests.conftest import TINY
from tests.helpers import embed
from tests.serve.conftest import restoring_threads
from tests.test_makeshards import photo_folder


def difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB").resize(a.size))).mean) / 3


@pytest.fixture(scope="module")
def same_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """Shards a-00000 (astronaut, coffee) and b-00000 (chelsea, rocket): both hold keys 000000000, 000000001."""
    root = tmp_path_factory.mktemp("same-keys")
    shards = []
    for prefix, names in (("a", ("astronaut", "coffee")), ("b", ("chelsea", "rocket"))):
        folder = photo_folder(root / prefix, names)
        shards += write_shards(samples_from_folder(folder), ShardSpec(out=str(root / "shards"), prefix=prefix))[
            "shards"
        ]
    embed(shards, root / "emb", TINY)
    build_index(IndexBuildConfig(embeddings_dir=str(root / "emb"), out_dir=str(root / "index")))
    return root / "index", root, shards


def test_search_hits_name_their_own_shard(same_keys: tuple[Path, Path, list[str]]) -> None:
    index_dir, root, _ = same_keys
    searcher = Searcher.from_dir(index_dir)
    for shard, name in (("a-00000", "coffee"), ("b-00000", "rocket")):
        hit = searcher.search_image(str(root / shard[0] / f"{name}.jpg"), k=1)[0][0]
        assert (hit.shard, hit.key, hit.caption) == (shard, "000000001", f"a photo of {name}")


def test_items_and_thumbnails_of_equal_keys_are_each_their_own(same_keys: tuple[Path, Path, list[str]]) -> None:
    index_dir, root, shards = same_keys
    config = ServeConfig(index_dir=str(index_dir), shards=tuple(shards), port=0, thumbnail_size=64)
    with restoring_threads(), running(config) as url, httpx.Client(base_url=url, timeout=30) as client:
        photo = (root / "b" / "rocket.jpg").read_bytes()
        hit = client.post("/search", files={"image": ("rocket.jpg", photo)}, data={"k": "1"}).json()["results"][0]
        assert hit["shard"] == "b-00000" and hit["item"] == "/items/b-00000/000000001"
        assert client.get(hit["item"]).json()["caption"] == "a photo of rocket"
        assert client.get("/items/a-00000/000000001").json()["caption"] == "a photo of coffee"
        thumbs = {
            s: Image.open(io.BytesIO(client.get(f"/thumbnails/{s}/000000001").content)) for s in ("a-00000", "b-00000")
        }
        rocket, coffee = Image.open(root / "b" / "rocket.jpg"), Image.open(root / "a" / "coffee.jpg")
        assert difference(thumbs["b-00000"], rocket) < difference(thumbs["b-00000"], coffee)
        assert difference(thumbs["a-00000"], coffee) < difference(thumbs["a-00000"], rocket)
