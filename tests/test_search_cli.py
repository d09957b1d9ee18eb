"""embed -> index -> search / eval-index through the command line and the Python API, on real photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmembed.cli import main
from mmembed.jobs import parse_job, run_job
from mmembed.search import Searcher
from tests.helpers import embed


@pytest.fixture(scope="module")
def built(demo_shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo shards embedded with the tiny model and indexed: (embed dir, index dir)."""
    from tests.conftest import TINY

    emb = tmp_path_factory.mktemp("emb")
    embed(demo_shards, emb, TINY)
    index_dir = emb / "index"
    assert main(["index", "--embeddings", str(emb), "--out", str(index_dir)]) == 0
    return emb, index_dir


def photo_file(folder: Path, stem: str) -> Path:
    """The demo image file for ``stem`` (the demo writes JPEG or PNG)."""
    return next(p for p in folder.glob(f"{stem}.*") if p.suffix in (".jpg", ".png"))


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_text_search_json_has_keys_scores_captions(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, index_dir = built
    hits = run_json(capsys, "search", "a dog running on the beach", "--index", str(index_dir), "-k", "5", "--json")
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert all({"key", "score", "caption", "shard", "offset"} <= set(h) for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_an_indexed_image_finds_itself_first(
    built: tuple[Path, Path], demo_photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, index_dir = built
    photo = photo_file(demo_photos, "chelsea-original")
    hits = run_json(capsys, "search", "--image", str(photo), "--index", str(index_dir), "-k", "3", "--json")
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert hits[0]["caption"] == (demo_photos / "chelsea-original.txt").read_text().strip()


def test_caption_search_over_the_text_index(built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, index_dir = built
    caption = "a rocket on the launch pad under a blue sky"
    hits = run_json(capsys, "search", caption, "--target", "text", "--index", str(index_dir), "-k", "2", "--json")
    assert [h["caption"] for h in hits] == [caption, caption]  # the original and the flipped copy
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_composed_query_moves_with_the_text_weight(built: tuple[Path, Path], demo_photos: Path) -> None:
    _, index_dir = built
    searcher = Searcher.from_dir(index_dir, device="cpu")
    photo = photo_file(demo_photos, "coffee-original")
    plain = searcher.search_image(photo, k=5)[0]
    zero = searcher.search_image(photo, k=5, text="at night", text_weight=0.0)[0]
    assert [h.key for h in zero] == [h.key for h in plain]
    text_only = searcher.search_image(photo, k=5, text="at night", text_weight=1.0)[0]
    assert [h.key for h in text_only] == [h.key for h in searcher.search_text("at night", k=5)[0]]


def test_queries_file_runs_as_one_batch(
    built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, index_dir = built
    queries = tmp_path / "q.txt"
    queries.write_text("a cat\n\na cup of coffee\nthe moon\n")
    result = run_json(capsys, "search", "--queries-file", str(queries), "--index", str(index_dir), "-k", "2", "--json")
    assert [r["query"] for r in result] == ["a cat", "a cup of coffee", "the moon"]
    assert all(len(r["results"]) == 2 for r in result)
    capsys.readouterr()
    assert main(["search", "a cat", "--index", str(index_dir), "-k", "2"]) == 0
    table = capsys.readouterr().out
    assert table.startswith("query: a cat\nrank") and "score" in table


def test_eval_index_reports_both_directions(built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, index_dir = built
    result = run_json(capsys, "eval-index", "--index", str(index_dir), "--queries", "20", "--json")
    for direction in ("text_to_image", "image_to_image"):
        assert result[direction]["recall@10"] == 1.0  # a Flat index is exact
        assert result[direction]["queries_per_second"] > 0 and result[direction]["queries"] == 20


def test_a_search_job_finds_what_the_command_line_finds(
    built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, index_dir = built
    hits = run_json(capsys, "search", "a cat", "--index", str(index_dir), "-k", "3", "--json")
    job = parse_job({"job": "search", "config": {"index_dir": str(index_dir), "query": "a cat", "k": 3}})
    assert run_job(job) == {"queries": ["a cat"], "results": [hits]}


def test_query_model_override_is_checked(built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, index_dir = built
    capsys.readouterr()
    assert main(["search", "a cat", "--index", str(index_dir), "--model", "ViT-B-32"]) == 2
    assert "embedded by a different model" in capsys.readouterr().err


def test_bad_requests_are_clear(built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, index_dir = built
    capsys.readouterr()
    assert main(["search", "--index", str(index_dir)]) == 2
    assert "no query" in capsys.readouterr().err
    assert main(["search", "x", "--index", str(index_dir), "-k", "0"]) == 2
    assert "k must be between" in capsys.readouterr().err
    assert main(["search", "x", "--index", str(tmp_path)]) == 2
    assert "infos.json" in capsys.readouterr().err


def test_append_adds_new_shards_without_rebuilding(
    built: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emb, _ = built
    partial = tmp_path / "emb"
    shutil.copytree(emb / "embeddings", partial / "embeddings")
    later = sorted((partial / "embeddings").glob("*.parquet"))[-1]
    held = later.rename(tmp_path / later.name)
    index_dir = tmp_path / "index"
    first = run_json(capsys, "index", "--embeddings", str(partial), "--out", str(index_dir))
    held.rename(later)
    appended = run_json(capsys, "index", "--embeddings", str(partial), "--out", str(index_dir), "--append")
    assert appended["count"] == 38 and first["count"] == 38 - 8
    again = run_json(capsys, "index", "--embeddings", str(partial), "--out", str(index_dir), "--append")
    assert again["appended_rows"] == 0


def test_an_index_built_from_a_relative_path_works_from_anywhere_and_names_a_moved_file(
    demo_shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import TINY

    embed(demo_shards[:2], tmp_path / "emb", TINY)
    monkeypatch.chdir(tmp_path)
    assert main(["index", "--embeddings", "emb", "--out", "index"]) == 0
    recorded = json.loads((tmp_path / "index" / "infos.json").read_text())["sources"]["files"]
    assert all(Path(f["path"]).is_absolute() for f in recorded)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run_json(capsys, "eval-index", "--index", "../index", "--queries", "5", "--json")
    assert result["image_to_image"]["recall@10"] == 1.0

    (tmp_path / "emb").rename(tmp_path / "emb-moved")
    capsys.readouterr()
    assert main(["eval-index", "--index", "../index", "--queries", "5", "--json"]) == 2
    err = capsys.readouterr().err
    assert "embeddings file missing (moved or deleted" in err and recorded[0]["path"] in err
    assert "truncated" not in err
