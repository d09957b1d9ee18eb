"""Resume checks what it resumes: outputs made from another file, model or settings are never reused (or mixed
with new ones); the run stops before any work, names the first difference and the fix, and changes nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmembed.cli import main
from mmembed.embed.resume import SETTINGS_KEY, SOURCE_KEY
from mmembed.schema import read_provenance

TINY = ["--model", "mmembed-tiny", "--random-init", "--device", "cpu", "--batch-size", "8"]  # seed 0, the default


def snapshot(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``out`` with its size and modification time: proof that nothing was touched."""
    return {str(p.relative_to(out)): (p.stat().st_size, p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


@pytest.fixture
def embedded(demo_shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[list[str], Path]:
    """Two demo shards, copied so a test may change them, embedded into ``out``."""
    shards = []
    for shard in demo_shards[:2]:
        shards.append(str(shutil.copy2(shard, tmp_path / Path(shard).name)))
    out = tmp_path / "out"
    assert main(["embed", "--shards", *shards, "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    return shards, out


def refused(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``mmembed embed argv``; check it exits 2 and leaves ``out`` as it was; return its error message."""
    before = snapshot(out)
    assert main(["embed", *argv]) == 2
    assert snapshot(out) == before
    return capsys.readouterr().err


def test_outputs_record_their_source_shard_and_settings(embedded: tuple[list[str], Path]) -> None:
    shards, out = embedded
    footer = pq.read_metadata(out / "embeddings" / f"{Path(shards[0]).stem}.parquet").metadata
    stat = os.stat(shards[0])
    source = pa.py_buffer(footer[SOURCE_KEY]).to_pybytes().decode()
    assert f'"url": "{os.path.abspath(shards[0])}"' in source and f'"size": {stat.st_size}' in source
    assert b'"caption_key": "txt"' in footer[SETTINGS_KEY]
    assert read_provenance(pq.read_schema(out / "embeddings" / f"{Path(shards[0]).stem}.parquet"))["model"]


def test_another_model_is_refused_before_any_work(
    embedded: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    shards, out = embedded
    argv = ["--shards", *shards, "--out", str(out), "--model", "mmembed-small", "--random-init", "--device", "cpu"]
    err = refused(argv, out, capsys)
    assert 'model "mmembed-tiny", but this run has "mmembed-small"' in err
    assert "--overwrite" in err and "another --out" in err and "Nothing was changed" in err

    assert main(["embed", *argv, "--overwrite"]) == 0  # the fix works
    schema = pq.read_schema(out / "embeddings" / f"{Path(shards[0]).stem}.parquet")
    assert read_provenance(schema)["model"] == "mmembed-small"


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        (["--seed", "1"], "init_seed 0, but this run has 1"),
        (["--output-dtype", "float16"], 'dtype "float32", but this run has "float16"'),
        (["--caption-key", "caption"], 'caption key "txt", but this run has "caption"'),
        (["--max-image-pixels", "1000"], "max image pixels 89478485, but this run has 1000"),
    ],
)
def test_other_settings_are_refused_naming_the_first_difference(
    embedded: tuple[list[str], Path], capsys: pytest.CaptureFixture[str], extra: list[str], phrase: str
) -> None:
    shards, out = embedded
    err = refused(["--shards", *shards, "--out", str(out), *TINY, *extra], out, capsys)
    assert phrase in err, err


def test_a_changed_or_moved_shard_is_refused(
    embedded: tuple[list[str], Path], demo_shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards, out = embedded
    shutil.copyfile(demo_shards[2], shards[1])  # same name, other content: another dataset into the same place
    err = refused(["--shards", *shards, "--out", str(out), *TINY], out, capsys)
    assert f"{Path(shards[1]).stem}.parquet was made with source " in err, err  # its size or time differs

    moved = tmp_path / "moved"
    moved.mkdir()
    copy = shutil.copy2(shards[0], moved / Path(shards[0]).name)
    err = refused(["--shards", str(copy), "--out", str(out), *TINY], out, capsys)
    assert "source url" in err and str(moved) in err


def test_a_rerun_with_the_same_settings_skips_everything(
    embedded: tuple[list[str], Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards, out = embedded
    monkeypatch.chdir(Path(shards[0]).parent)  # relative paths name the same files
    relative = [Path(s).name for s in shards]
    before = snapshot(out / "embeddings")
    assert main(["embed", "--shards", *relative, "--out", str(out), *TINY]) == 0
    assert '"shards_skipped": 2' in capsys.readouterr().out
    assert snapshot(out / "embeddings") == before


def test_outputs_without_a_record_are_refused(
    embedded: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    shards, out = embedded
    path = out / "embeddings" / f"{Path(shards[0]).stem}.parquet"
    table = pq.read_table(path)
    metadata = {k: v for k, v in table.schema.metadata.items() if k not in (SOURCE_KEY, SETTINGS_KEY)}
    pq.write_table(table.replace_schema_metadata(metadata), path)  # as an older mmembed wrote it
    err = refused(["--shards", *shards, "--out", str(out), *TINY], out, capsys)
    assert "no record of its source shard and settings" in err


def test_a_corrupt_final_named_file_is_named_with_the_fix(
    embedded: tuple[list[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    shards, out = embedded
    path = out / "embeddings" / f"{Path(shards[1]).stem}.parquet"
    path.write_bytes(path.read_bytes()[:-100])  # the footer is gone
    err = refused(["--shards", *shards, "--out", str(out), *TINY], out, capsys)
    assert f"{path} is not a readable Parquet file" in err
    assert f"delete {path} and {out / 'errors' / path.name} to redo that shard" in err and "--overwrite" in err
