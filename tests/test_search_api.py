"""The Python API and ``mmembed search`` agree: text queries by vector, keyword and hybrid mode, image queries
from a path, bytes, a PIL image or an array, ``where`` in each, one composed-query default, and hits that
carry what the HTTP hits carry (metadata, size, similarity). Real photos, the tiny model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmembed.cli import main
from mmembed.config import DEFAULT_TEXT_WEIGHT, ConfigError
from mmembed.search import Searcher, SearchHit
from mmembed.serve.models import Hit


@pytest.fixture(scope="module")
def searcher(served_index: Path) -> Searcher:
    return Searcher.from_dir(served_index, device="cpu")


def photo(folder: Path, stem: str) -> Path:
    return next(p for p in folder.glob(f"{stem}.*") if p.suffix in (".jpg", ".png"))


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main(list(argv)) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_hits_carry_what_http_hits_carry(searcher: Searcher) -> None:
    hit = searcher.search_text("a cat", k=1)[0][0]
    assert hit.metadata["source"].startswith("skimage.data.") and hit.width > 0 and hit.height > 0
    assert isinstance(hit.similarity, float) and -1 <= hit.similarity <= 1
    http_only = {"item", "thumbnail"}
    assert {f.name for f in dataclasses.fields(SearchHit)} == set(Hit.model_fields) - http_only


def test_every_image_form_finds_the_same_photo(searcher: Searcher, demo_photos: Path) -> None:
    path = photo(demo_photos, "chelsea-original")
    with Image.open(path) as opened:
        pil = opened.convert("RGB")
    forms = [path, str(path), path.read_bytes(), pil, np.asarray(pil)]
    results = searcher.search_image(forms, k=3)
    assert len(results) == len(forms)
    first = [hits[0] for hits in results]
    assert {h.key for h in first} == {first[0].key} and first[0].caption == "close-up of an orange tabby cat"
    assert all(h.score == pytest.approx(1.0, abs=1e-3) for h in first)
    single = searcher.search_image(np.asarray(pil), k=3)
    assert len(single) == 1 and single[0][0].key == first[0].key
    with pytest.raises(ConfigError, match=r"height x width x 3 uint8"):
        searcher.search_image(np.zeros((4, 4), np.float32))


def test_composed_queries_share_one_default_weight(searcher: Searcher, demo_photos: Path) -> None:
    path = photo(demo_photos, "coffee-original")
    default = searcher.search_image(path, k=5, text="at night")[0]
    explicit = searcher.search_image(path, k=5, text="at night", text_weight=DEFAULT_TEXT_WEIGHT)[0]
    assert [h.to_dict() for h in default] == [h.to_dict() for h in explicit]
    assert DEFAULT_TEXT_WEIGHT == 0.3


def test_where_holds_in_every_mode_and_query_kind(searcher: Searcher, demo_photos: Path) -> None:
    expr = "metadata->>'variant' = 'flipped'"
    for mode in ("vector", "keyword", "hybrid"):
        hits = searcher.search_text("a rocket", k=5, where=expr, mode=mode)[0]
        assert hits and all(h.metadata["variant"] == "flipped" for h in hits), mode
    by_image = searcher.search_image(photo(demo_photos, "rocket-original"), k=5, where=expr)[0]
    assert by_image[0].caption == "a rocket on the launch pad under a blue sky"
    assert all(h.metadata["variant"] == "flipped" for h in by_image)
    with pytest.raises(ConfigError, match="unknown column 'colour'"):
        searcher.search_text("a cat", where="colour = 'red'")


def test_keyword_mode_finds_caption_words(searcher: Searcher) -> None:
    hits = searcher.search_text("rocket", k=5, mode="keyword")[0]
    assert [h.caption for h in hits] == ["a rocket on the launch pad under a blue sky"] * 2
    phrase = searcher.search_text('"grey surface"', k=5, mode="keyword")[0]
    assert {h.caption for h in phrase} == {"grey surface of the moon with craters"}
    hybrid = searcher.search_text("rocket", k=5, mode="hybrid")[0]
    assert {h.caption for h in hybrid[:2]} == {"a rocket on the launch pad under a blue sky"}
    with pytest.raises(ConfigError, match="mode 'fuzzy' is not one of"):
        searcher.search_text("rocket", mode="fuzzy")


def test_the_cli_takes_where_and_mode(served_index: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = ["--index", str(served_index), "--json"]
    hits = run_json(capsys, "search", "coins", "--mode", "keyword", "-k", "3", *index)
    assert [h["caption"] for h in hits] == ["old coins laid out on a dark background"] * 2
    assert hits[0]["metadata"]["source"] == "skimage.data.coins" and hits[0]["width"] > 0
    where = "metadata->>'variant' = 'original' AND width >= 256"
    hits = run_json(capsys, "search", "a cat", "--where", where, "--mode", "hybrid", "-k", "4", *index)
    assert len(hits) == 4 and all(h["metadata"]["variant"] == "original" and h["width"] >= 256 for h in hits)
    capsys.readouterr()
    assert main(["search", "a cat", "--where", "width >", *index]) == 2
    assert "--where 'width >' is not one SQL condition" in capsys.readouterr().err
    assert main(["search", "--image", "x.jpg", "--mode", "keyword", *index]) == 2
    assert "--mode keyword ranks text queries" in capsys.readouterr().err
