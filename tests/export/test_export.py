"""``mmembed export`` end to end on a real (tiny-model) index: byte-for-byte copies, the manifest, the selection
flags, refusals, a changed source shard, and the exported shards read back by the embed job's reader."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmembed.cli import main
from mmembed.config import ConfigError, DecodeConfig
from mmembed.export.config import ExportConfig
from mmembed.export.run import run
from mmembed.records import RawSample, SampleError
from mmembed.search import Searcher
from mmembed.shards import iter_shard_samples
from tests.conftest import TINY
from tests.export.conftest import (
    INDEXED,
    LONG_KEY,
    SOURCES,
    Dataset,
    source_samples,
    tar_samples,
    write_sources,
)
from tests.tarmaker import write_tar

QUERY = "an orange tabby cat"


def config(dataset: Dataset, out: Path, **changes: object) -> ExportConfig:
    return ExportConfig(index_dir=str(dataset.index), shards=(dataset.pattern,), out=str(out), **changes)


def manifest(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def exported(out: Path) -> dict[tuple[str, str], list[tuple[str, bytes]]]:
    """(output shard, key) -> the members written there, read back from the tars with tarfile alone."""
    found = {}
    for path in sorted((out / "shards").glob("*.tar")):
        for key, members in tar_samples(path.read_bytes()).items():
            found[(path.name.removesuffix(".tar"), key)] = members
    return found


def assert_copies(rows: list[dict], written: dict[tuple[str, str], list[tuple[str, bytes]]]) -> None:
    """Every exported row's output sample holds its source sample's members, the same bytes under the same
    names (but for the key, where the manifest says it was renamed), and nothing else was written."""
    sources = source_samples()
    for row in rows:
        source = sources[(row["source_shard"], row["source_key"])]
        expected = [(row["key"] + name[len(row["source_key"]) :], data) for name, data in source]
        assert written[(row["shard"], row["key"])] == expected
        assert row["members"] == [name for name, _ in expected]
        assert row["bytes"] == sum(len(data) for _, data in source)
    assert len(written) == len(rows)


def test_a_query_exports_its_hits_byte_for_byte_in_rank_order(dataset: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run(config(dataset, out, query=QUERY, k=INDEXED, samples_per_shard=4))
    hits = Searcher.from_dir(dataset.index, TINY).search_text(QUERY, k=INDEXED)[0]
    rows = manifest(out)
    assert [(r["source_shard"], r["source_key"], r["source_offset"], r["rank"]) for r in rows] == [
        (h.shard, h.key, h.offset, h.rank) for h in hits
    ]
    assert [r["score"] for r in rows] == pytest.approx([h.score for h in hits], abs=1e-6)
    assert {r["query"] for r in rows} == {QUERY} and all(r["error"] is None for r in rows)
    assert rows[0]["selected_by"] == "rank 1 of --query on the image index"
    # rank order across shards of 4: export-000000 holds ranks 1-4, export-000002 ranks 9-11
    assert [r["shard"] for r in rows] == [f"export-{i // 4:06d}" for i in range(INDEXED)]
    assert_copies(rows, exported(out))
    # the sample with members before its image, one with a member the embed job ignores, the long pax key
    assert {("a-00000", "000001"), ("a-00000", "000000"), ("a-00001", LONG_KEY)} <= {
        (r["source_shard"], r["source_key"]) for r in rows
    }
    assert summary["exported"] == summary["selected"] == INDEXED and summary["errors"] == 0
    assert summary["shards"] == [str(out / "shards" / f"export-{i:06d}.tar") for i in range(3)]
    assert json.loads((out / "summary.json").read_text()) == summary


def test_exported_shards_are_read_by_the_embed_jobs_reader(dataset: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(config(dataset, out, where="true", samples_per_shard=5))
    rows = manifest(out)
    for path in sorted((out / "shards").glob("*.tar")):
        with path.open("rb") as f:
            items = list(iter_shard_samples(f, path.stem, DecodeConfig().image_extensions))
        assert not [i for i in items if isinstance(i, SampleError)]
        assert [i.key for i in items if isinstance(i, RawSample)] == [r["key"] for r in rows if r["shard"] == path.stem]


def test_where_alone_selects_in_shard_and_offset_order_and_renames_repeated_keys(
    dataset: Dataset, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = run(config(dataset, out, where="key = '000000'"))
    rows = manifest(out)
    assert [(r["source_shard"], r["source_key"]) for r in rows] == [
        ("a-00000", "000000"),
        ("a-00001", "000000"),
        ("b-00000", "000000"),
    ]
    assert [r["key"] for r in rows] == ["000000", "000000_1", "000000_2"]  # one output shard: keys stay unique
    assert all(r["rank"] is None and r["score"] is None and r["query"] is None for r in rows)
    assert {r["selected_by"] for r in rows} == {"matches --where \"key = '000000'\""}
    assert_copies(rows, exported(out))
    assert summary["target"] is None and summary["k"] is None

    out = tmp_path / "by_metadata"
    run(config(dataset, out, where="metadata->>'src' = 'b'", k=2))
    rows = manifest(out)
    assert [(r["source_shard"], r["source_key"]) for r in rows] == [("b-00000", "000000"), ("b-00000", "000001")]
    offsets = [r["source_offset"] for r in rows]
    assert offsets == sorted(offsets)
    assert_copies(rows, exported(out))


def test_a_query_with_where_takes_its_best_hits_among_the_matches(dataset: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run(config(dataset, out, query=QUERY, where="shard = 'b-00000'", k=2))
    rows = manifest(out)
    hits = Searcher.from_dir(dataset.index, TINY).search_text(QUERY, k=INDEXED)[0]
    best_b = [(h.shard, h.key) for h in hits if h.shard == "b-00000"][:2]
    assert [(r["source_shard"], r["source_key"]) for r in rows] == best_b
    assert rows[0]["selected_by"] == "rank 1 of --query on the image index; matches --where \"shard = 'b-00000'\""
    assert_copies(rows, exported(out))


def test_min_score_and_k_cut_the_hits(dataset: Dataset, tmp_path: Path) -> None:
    hits = Searcher.from_dir(dataset.index, TINY).search_text(QUERY, k=INDEXED)[0]
    scores = [h.score for h in hits]
    cut = (scores[2] + scores[3]) / 2
    assert scores[2] > cut > scores[3]  # distinct scores around the cut: the case under test
    summary = run(config(dataset, tmp_path / "min", query=QUERY, k=INDEXED, min_score=cut))
    rows = manifest(tmp_path / "min")
    assert [r["rank"] for r in rows] == [1, 2, 3] and all(r["score"] >= cut for r in rows)
    assert summary["below_min_score"] == INDEXED - 3 and summary["exported"] == 3
    assert rows[0]["selected_by"].endswith(f">= --min-score {cut}")

    run(config(dataset, tmp_path / "k", query=QUERY, k=2))
    rows = manifest(tmp_path / "k")
    assert [(r["source_key"], r["rank"]) for r in rows] == [(h.key, h.rank) for h in hits[:2]]
    assert_copies(rows, exported(tmp_path / "k"))


def test_a_keyword_query_exports_the_captions_that_hold_its_phrase(dataset: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    summary = run(config(dataset, out, query='"of the" OR astro*', mode="keyword"))
    rows = manifest(out)
    assert {(r["source_shard"], r["source_key"]) for r in rows} == {("a-00000", "000000"), ("b-00000", "000000")}
    assert rows[0]["selected_by"].startswith("rank 1 of --query (keyword ranking) on the image index")
    assert summary["mode"] == "keyword" and summary["exported"] == 2
    assert_copies(rows, exported(out))
    with pytest.raises(ConfigError, match="--min-score is a cosine similarity, which --mode hybrid does not give"):
        config(dataset, out, query="moon", mode="hybrid", min_score=0.1)
    with pytest.raises(ConfigError, match="--mode keyword ranks a --query TEXT"):
        config(dataset, out, where="true", mode="keyword")


def test_a_second_run_into_a_non_empty_out_is_refused_unless_overwrite(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative --out
    out = tmp_path / "out"
    run(config(dataset, Path("out"), where="true", samples_per_shard=1))
    assert len(list((out / "shards").glob("*.tar"))) == INDEXED
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    argv = ["export", "--index", str(dataset.index), "--shards", dataset.pattern, "--out", "out", "--where", "true"]
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched

    assert main([*argv, "-k", "2", "--samples-per-shard", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["export-000000.tar", "export-000001.tar"]
    assert len(manifest(out)) == 2  # the earlier export's shards are gone, not left beside the new ones


def test_shards_missing_from_the_list_and_bad_arguments_are_refused(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    only_a = config(dataset, tmp_path / "out", where="true")
    with pytest.raises(ConfigError, match=r"b-00000.*--shards"):
        run(ExportConfig(**{**only_a.__dict__, "shards": (str(dataset.shard_dir / "a-*.tar"),)}))
    assert not (tmp_path / "out" / "manifest.parquet").exists()
    base = ["export", "--index", str(dataset.index), "--shards", dataset.pattern, "--out", str(tmp_path / "o")]
    for extra, message in (
        ([], "--query TEXT, --image FILE or --where EXPR"),
        (["--where", "true", "--min-score", "0.2"], "--min-score needs a --query"),
        (["--query", "cat", "-k", "0"], "-k must be between"),
    ):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err


def test_a_changed_source_shard_gives_error_rows_and_exit_3(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    shards = tmp_path / "changed"
    write_sources(shards)
    a = shards / "a-00000.tar"  # re-created with other keys in the same layout
    fmt, members = SOURCES["a-00000"]
    write_tar(a, [(f"x{name}", data) for name, data in members], fmt=fmt)
    b = shards / "b-00000.tar"  # cut right after its first sample
    with tarfile.open(b) as tar:
        cut = tar.getmember("000001.json").offset
    b.write_bytes(b.read_bytes()[:cut])
    out = tmp_path / "out"
    argv = ["export", "--index", str(dataset.index), "--shards", str(shards / "*.tar"), "--out", str(out)]
    assert main([*argv, "--where", "true"]) == 3
    assert "5 of 9 samples could not be read" in capsys.readouterr().err
    rows = manifest(out)
    failed = {(r["source_shard"], r["source_key"]): r["error"] for r in rows if r["error"]}
    assert set(failed) == {("a-00000", k) for k in ("000000", "000001", "000003")} | {
        ("b-00000", "000001"),
        ("b-00000", "000002"),
    }
    assert all("changed since it was embedded" in e for e in failed.values()), failed
    assert "'x000000.jpg'" in failed[("a-00000", "000000")] and "no tar header" in failed[("b-00000", "000001")]
    assert all(r["shard"] is None and r["key"] is None and r["members"] is None for r in rows if r["error"])
    good = [r for r in rows if not r["error"]]
    assert {(r["source_shard"], r["source_key"]) for r in good} == {("b-00000", "000000")} | {
        ("a-00001", k) for k in ("000000", LONG_KEY, "000005")
    }
    assert_copies(good, exported(out))
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["errors"], summary["exported"]) == (5, INDEXED - 5)


def test_an_object_store_export_reads_and_writes_through_s3(dataset: Dataset, bucket: str) -> None:
    from mmembed import storage

    for path in dataset.shard_dir.glob("*.tar"):
        storage.upload(str(path), f"{bucket}/src/{path.name}")
    out = f"{bucket}/export"
    summary = run(
        ExportConfig(
            index_dir=str(dataset.index),
            shards=(f"{bucket}/src/*.tar",),
            out=out,
            query=QUERY,
            k=6,
            samples_per_shard=4,
        )
    )
    assert summary["shards"] == [f"{out}/shards/export-000000.tar", f"{out}/shards/export-000001.tar"]
    assert sorted(storage.glob(f"{out}/**")) == sorted(
        [*summary["shards"], f"{out}/manifest.parquet", f"{out}/summary.json"]
    )
    with storage.open_read(f"{out}/manifest.parquet") as f:
        rows = pq.read_table(f).to_pylist()
    written = {}
    for url in summary["shards"]:
        name = url.rsplit("/", 1)[1].removesuffix(".tar")
        written.update({(name, k): m for k, m in tar_samples(storage.read_bytes(url)).items()})
    assert [r["rank"] for r in rows] == list(range(1, 7))
    assert_copies(rows, written)
    with pytest.raises(ConfigError, match="--overwrite"):
        run(ExportConfig(index_dir=str(dataset.index), shards=(f"{bucket}/src/*.tar",), out=out, where="true"))


def test_the_command_registers_without_heavy_imports() -> None:
    """``mmembed --help`` builds every sub-command's parser: export's must not load faiss, torch or DuckDB."""
    code = (
        "import sys; from mmembed.cli import build_parser; build_parser();"
        "print(sorted(m for m in ('faiss', 'torch', 'duckdb', 'mmembed.export.run') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
