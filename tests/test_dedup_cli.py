"""mmembed dedup on real photos: byte copies, re-encodes and resizes grouped; clean shards written."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmembed.cli import main
from tests.conftest import TINY
from tests.helpers import embed
from tests.photos import load_photo

DISTINCT = ("astronaut", "coffee", "chelsea", "rocket", "camera", "horse")


def jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Shards of 6 distinct photos plus a byte copy, a quality-35 re-encode and a half-size copy: (shards, emb)."""
    root = tmp_path_factory.mktemp("dedup")
    photos = root / "photos"
    photos.mkdir()
    originals = {name: jpeg(load_photo(name), 92) for name in DISTINCT}
    files = dict(originals)
    files["zz-astronaut-copy"] = originals["astronaut"]
    files["zz-coffee-q35"] = jpeg(Image.open(io.BytesIO(originals["coffee"])), 35)
    small = Image.open(io.BytesIO(originals["chelsea"]))
    files["zz-chelsea-half"] = jpeg(small.resize((small.width // 2, small.height // 2)), 92)
    for name, data in files.items():
        (photos / f"{name}.jpg").write_bytes(data)
        (photos / f"{name}.txt").write_text(f"a photo: {name.removeprefix('zz-')}")
    assert (
        main(["make-shards", "--images", str(photos), "--out", str(root / "shards"), "--samples-per-shard", "5"]) == 0
    )
    emb = root / "emb"
    embed(sorted(str(p) for p in (root / "shards").glob("*.tar")), emb, TINY)
    return root / "shards", emb


def tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def sources(emb: Path) -> dict[tuple[str, str], str]:
    """(shard, key) -> source photo name, from the json metadata make-shards wrote."""
    table = pq.read_table(emb / "embeddings").to_pylist()
    return {(r["shard"], r["key"]): json.loads(r["metadata"])["source_path"][:-4] for r in table}


def test_hash_methods_group_copies_and_write_clean_shards(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards, emb = dataset
    out = tmp_path / "dedup"
    argv = ["dedup", "--embeddings", str(emb), "--out", str(out), "--methods", "exact,perceptual", "--keep", "first"]
    capsys.readouterr()
    assert main([*argv, "--write-shards", str(tmp_path / "clean"), "--shards", str(shards / "*.tar")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((out / "summary.json").read_text()) | {"written_shards": summary["written_shards"]}
    assert (summary["samples"], summary["groups"], summary["removed"], summary["kept"]) == (9, 3, 3, 6)

    names = sources(emb)
    rows = pq.read_table(out / "duplicates.parquet").to_pylist()
    groups: dict[int, set[str]] = {}
    for row in rows:
        groups.setdefault(row["group_id"], set()).add(names[(row["shard"], row["key"])])
    assert sorted(map(sorted, groups.values())) == [
        ["astronaut", "zz-astronaut-copy"],
        ["chelsea", "zz-chelsea-half"],
        ["coffee", "zz-coffee-q35"],
    ]
    by_name = {names[(r["shard"], r["key"])]: r for r in rows}
    assert by_name["zz-astronaut-copy"]["methods"] == ["exact", "perceptual"]
    assert by_name["zz-coffee-q35"]["methods"] == ["perceptual"]
    assert all(r["kept"] == (not names[(r["shard"], r["key"])].startswith("zz-")) for r in rows)  # --keep first

    keep = pq.read_table(out / "keep.parquet").to_pylist()
    assert sorted(names[(r["shard"], r["key"])] for r in keep) == sorted(DISTINCT)
    clean = sorted((tmp_path / "clean").glob("*.tar"))
    kept_members = [m for path in clean for m in tar_names(path)]
    assert len([m for m in kept_members if m.endswith(".jpg")]) == 6 == summary["written_shards"]["samples"]


def test_semantic_pass_writes_the_similarity_histogram(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, emb = dataset
    out = tmp_path / "dedup"
    capsys.readouterr()
    argv = ["dedup", "--embeddings", str(emb), "--out", str(out), "--eps", "0.02"]
    assert main([*argv, "--allow-random-weights"]) == 0  # the tiny test model has random weights
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 9 and summary["removed"] >= 3  # at least the byte copy and the two hash matches
    assert "semantic" in summary["methods"] and (out / "nearest_similarity.png").stat().st_size > 5_000
    assert main(["dedup", "--embeddings", str(emb), "--out", str(out)]) == 2  # outputs exist: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_bad_inputs_name_the_file(
    dataset: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, emb = dataset
    broken = tmp_path / "emb" / "embeddings"
    broken.mkdir(parents=True)
    victim = sorted((emb / "embeddings").glob("*.parquet"))[0]
    (broken / victim.name).write_bytes(victim.read_bytes()[:-100])
    capsys.readouterr()
    assert main(["dedup", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "o")]) == 2
    assert victim.name in capsys.readouterr().err
    assert main(["dedup", "--embeddings", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "run the embed job first" in capsys.readouterr().err
    assert main(["dedup", "--embeddings", str(emb), "--out", str(tmp_path / "o"), "--write-shards", "x"]) == 2
    assert "needs --shards" in capsys.readouterr().err
