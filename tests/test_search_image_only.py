"""search over image-only samples: text -> image still runs the text tower against the image index, text-index
searches (captions, composed queries) never return a row without a caption, and output shows no "None"."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmembed.cli import main
from mmembed.config import ConfigError
from mmembed.encoders.openclip import embedding_dim, provenance
from mmembed.index import IndexBuildConfig, build_index
from mmembed.search import Searcher
from tests.conftest import TINY
from tests.index.synth import blobs, exact_top_k, write_embed_dir

N, PER_SHARD = 400, 200


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    """Two flat (exact) index dirs recorded as the tiny model's, so real text queries can be encoded: one with
    about half its samples captioned, one embedded with --captions none."""
    root = tmp_path_factory.mktemp("search-image-only")
    dim = embedding_dim(TINY)
    image, text = blobs(N, dim, seed=51), blobs(N, dim, seed=52)
    has_text = np.random.default_rng(53).random(N) < 0.5
    for name, mask in (("mixed", has_text), ("none", np.zeros(N, dtype=bool))):
        write_embed_dir(root / name, image, text, PER_SHARD, provenance=provenance(TINY), has_text=mask)
        build_index(IndexBuildConfig(str(root / name), str(root / name / "index"), family="flat"))
    return root / "mixed" / "index", root / "none" / "index", image, text, has_text


@pytest.fixture(scope="module")
def mixed(dirs) -> Searcher:
    return Searcher.from_dir(dirs[0], device="cpu")


def row_ids(hits) -> list[int]:  # noqa: ANN001 - a list of SearchHit
    return [h.row_id for h in hits]


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (30, 160, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def test_text_to_image_finds_image_only_samples(dirs, mixed: Searcher) -> None:
    _, _, image, _, has_text = dirs
    hits = mixed.search_text("a red square on a table", k=20)[0]
    query = mixed.encoder.encode_texts(["a red square on a table"])
    assert row_ids(hits) == exact_top_k(image, query, 20)[0].tolist()  # the text tower's vector, image index
    assert all((h.caption is None) == (not has_text[h.row_id]) for h in hits)
    assert any(h.caption is None for h in hits)


def test_caption_search_returns_captioned_samples_only(dirs, mixed: Searcher) -> None:
    _, _, _, text, has_text = dirs
    hits = mixed.search_text("a red square on a table", k=30, target="text")[0]
    query = mixed.encoder.encode_texts(["a red square on a table"])
    captioned = np.flatnonzero(has_text)
    assert row_ids(hits) == captioned[exact_top_k(text[captioned], query, 30)[0]].tolist()
    assert all(h.caption is not None for h in hits)


def test_composed_query_over_captions_skips_image_only_samples(dirs, mixed: Searcher) -> None:
    _, _, _, _, has_text = dirs
    for weight in (0.0, 0.5):
        hits = mixed.search_image(png_bytes(), k=150, target="text", text="at night", text_weight=weight)[0]
        assert len(hits) == 150 and all(has_text[h.row_id] for h in hits)


def test_an_index_without_text_refuses_caption_search_before_encoding(dirs) -> None:
    _, none_index, image, _, _ = dirs
    searcher = Searcher.from_dir(none_index, device="cpu")
    with pytest.raises(ConfigError, match="no text index: the embeddings hold no text vectors .*--captions none"):
        searcher.search_text("a cat", target="text")
    assert searcher._encoder is None  # failed before loading the query model
    with pytest.raises(ConfigError, match="no text index"):
        searcher.search_vectors(image[:1], target="text")
    hits = searcher.search_text("a cat", k=5)[0]
    assert len(hits) == 5 and all(h.caption is None for h in hits)


def test_cli_prints_no_caption_as_empty_and_null(dirs, capsys: pytest.CaptureFixture[str]) -> None:
    _, none_index, _, _, _ = dirs
    capsys.readouterr()
    assert main(["search", "a cat", "--index", str(none_index), "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all(h["caption"] is None for h in hits)
    assert main(["search", "a cat", "--index", str(none_index), "-k", "3"]) == 0
    table = capsys.readouterr().out
    assert "shard-00000-" in table or "shard-00001-" in table
    assert "None" not in table and "null" not in table
    assert main(["search", "a cat", "--index", str(none_index), "--target", "text"]) == 2
    assert "--captions none" in capsys.readouterr().err
