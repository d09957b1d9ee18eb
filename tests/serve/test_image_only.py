"""The server over image-only samples: null captions stay null (valid JSON, never "None" or NaN), caption
search returns captioned samples only, an index without text vectors refuses it with a 422 that says why,
and the page shows no caption where there is none and offers no caption search where it cannot run."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from mmembed.encoders.openclip import embedding_dim, provenance
from mmembed.index import IndexBuildConfig, build_index
from mmembed.search import parse_metadata
from mmembed.serve.config import ServeConfig
from mmembed.serve.server import running
from tests.conftest import TINY
from tests.index.synth import blobs, write_embed_dir
from tests.serve.conftest import restoring_threads

N, PER_SHARD = 120, 60
HAS_TEXT = np.random.default_rng(61).random(N) < 0.5


def strict_json(response: httpx.Response) -> object:
    """The body as JSON, refusing NaN and Infinity (which json.loads would otherwise accept)."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a response body: not valid JSON")

    return json.loads(response.text, parse_constant=refuse)


def index_dir(root: Path, has_text: np.ndarray) -> str:
    """A flat index over synthetic vectors recorded as the tiny model's (so text queries can be encoded)."""
    dim = embedding_dim(TINY)
    write_embed_dir(
        root, blobs(N, dim, seed=62), blobs(N, dim, seed=63), PER_SHARD, provenance(TINY), has_text=has_text
    )
    build_index(IndexBuildConfig(str(root), str(root / "index"), family="flat"))
    return str(root / "index")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two servers (no shards: no thumbnails): 'mixed', about half its samples captioned, and 'none', embedded
    with --captions none."""
    root = tmp_path_factory.mktemp("serve-image-only")
    mixed = ServeConfig(index_dir(root / "mixed", HAS_TEXT), port=0, max_k=N)
    none = ServeConfig(index_dir(root / "none", np.zeros(N, dtype=bool)), port=0, max_k=N)
    with restoring_threads(), running(mixed) as mixed_url, running(none) as none_url:
        yield {"mixed": mixed_url, "none": none_url}


@pytest.fixture(scope="module")
def base_url(servers: dict[str, str]) -> str:
    """The mixed server: the page this module's browser test opens."""
    return servers["mixed"]


def search(url: str, query: str, k: int, target: str) -> httpx.Response:
    return httpx.post(f"{url}/search", json={"query": query, "k": k, "target": target}, timeout=30)


def row(hit: dict) -> int:
    return hit["row_id"]


def test_image_search_returns_image_only_samples_with_null_captions(servers: dict[str, str]) -> None:
    response = search(servers["mixed"], "a bird on a wire", N, "image")
    assert response.status_code == 200, response.text
    hits = strict_json(response)["results"]
    assert len(hits) == N  # every sample, captioned or not
    assert all((h["caption"] is None) == (not HAS_TEXT[row(h)]) for h in hits)
    assert '"caption":null' in response.text.replace(" ", "") and "None" not in response.text


def test_caption_search_returns_captioned_samples_only(servers: dict[str, str]) -> None:
    response = search(servers["mixed"], "a bird on a wire", N, "text")
    hits = strict_json(response)["results"]
    assert len(hits) == int(HAS_TEXT.sum())  # k = every sample: only the captioned ones come back
    assert all(HAS_TEXT[row(h)] and h["caption"] for h in hits)


def test_an_image_only_item_and_health(servers: dict[str, str]) -> None:
    image_only = int(np.flatnonzero(~HAS_TEXT)[0])
    shard, key = (
        f"shard-{image_only // PER_SHARD:05d}",
        f"shard-{image_only // PER_SHARD:05d}-{image_only % PER_SHARD:06d}",
    )
    item = strict_json(httpx.get(f"{servers['mixed']}/items/{shard}/{key}"))
    assert item["caption"] is None and item["key"] == key and item["metadata"]["url"].endswith(".jpg")
    assert strict_json(httpx.get(f"{servers['mixed']}/healthz"))["text_rows"] == int(HAS_TEXT.sum())
    assert strict_json(httpx.get(f"{servers['none']}/healthz"))["text_rows"] == 0


def test_without_text_vectors_caption_search_is_a_clear_422(servers: dict[str, str]) -> None:
    response = search(servers["none"], "a bird on a wire", 5, "text")
    assert response.status_code == 422
    detail = strict_json(response)["detail"]
    assert "target 'text' is not available" in detail and "--captions none" in detail
    assert "/tmp" not in detail  # no server paths in an API error
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 120, 200)).save(buffer, "PNG")
    upload = httpx.post(
        f"{servers['none']}/search", files={"image": ("q.png", buffer.getvalue())}, data={"target": "text"}
    )
    assert upload.status_code == 422 and "--captions none" in upload.json()["detail"]
    images = search(servers["none"], "a bird on a wire", 5, "image")
    assert images.status_code == 200 and all(h["caption"] is None for h in strict_json(images)["results"])


def test_metadata_with_nan_stays_valid_json() -> None:
    assert parse_metadata('{"aesthetic": NaN, "w": Infinity, "ok": 1.5}') == {"aesthetic": None, "w": None, "ok": 1.5}
    assert parse_metadata("not json") == "not json" and parse_metadata(None) is None


def test_page_shows_no_caption_where_there_is_none(page, servers: dict[str, str]) -> None:  # noqa: ANN001
    page.wait_for_function("() => document.querySelector('#index-info').textContent.includes('120 samples')")
    assert not page.is_disabled("#target option[value='text']")
    page.select_option("#k", "96")
    page.fill("#query", "a bird on a wire")
    page.click("#search-button")
    page.wait_for_selector("#results .result")
    cards = page.locator("#results .result")
    assert cards.count() == 96 and page.locator("#results .result .caption").count() < 96
    text = page.text_content("#results")
    assert "null" not in text and "None" not in text and "no caption" not in text and "NaN" not in text
    bare = page.locator("#results .result:not(:has(.caption))").first
    bare.click()
    page.wait_for_selector("#detail[open]")
    assert page.text_content("#detail-caption").startswith("shard-")  # its key stands in for the caption

    page.goto(servers["none"] + "/")
    page.wait_for_function("() => document.querySelector('#target option[value=\"text\"]').disabled")
    assert "none in this index" in page.text_content("#target")
