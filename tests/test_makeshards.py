"""make-shards: folders with sidecar captions and CSV/Parquet manifests -> WebDataset shards."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from mmembed.makeshards import ShardSpec, samples_from_folder, samples_from_manifest, write_shards
from tests.tarmaker import jpeg_bytes


def photo_folder(folder: Path, names: tuple[str, ...] = ("astronaut", "coffee", "chelsea")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(name))
        (folder / f"{name}.txt").write_text(f"a photo of {name}\n")
    (folder / "coffee.json").write_text('{"license": "cc0"}')
    return folder


def test_folder_to_shards_readable_by_webdataset(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos")
    (photos / "uncaptioned.jpg").write_bytes(jpeg_bytes("rocket"))
    result = write_shards(samples_from_folder(photos), ShardSpec(out=str(tmp_path / "shards"), samples_per_shard=3))
    assert result["samples"] == 4 and len(result["shards"]) == 2 and result["no_caption"] == 1

    samples = list(wds.WebDataset(result["shards"], shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["000000000", "000000001", "000000002", "000000003"]
    by_source = {json.loads(s["json"])["source_path"]: s for s in samples}
    assert by_source["astronaut.jpg"]["txt"] == b"a photo of astronaut"
    assert by_source["astronaut.jpg"]["jpg"] == (photos / "astronaut.jpg").read_bytes()  # bytes copied, not re-encoded
    assert json.loads(by_source["coffee.jpg"]["json"])["license"] == "cc0"
    assert "txt" not in by_source["uncaptioned.jpg"]


def test_shards_are_byte_identical_across_runs(tmp_path: Path) -> None:
    photos = photo_folder(tmp_path / "photos")
    first = write_shards(samples_from_folder(photos), ShardSpec(out=str(tmp_path / "a")))
    second = write_shards(samples_from_folder(photos), ShardSpec(out=str(tmp_path / "b")))
    assert Path(first["shards"][0]).read_bytes() == Path(second["shards"][0]).read_bytes()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_manifest_with_extra_columns_and_key_column(tmp_path: Path, fmt: str) -> None:
    photo_folder(tmp_path / "photos")
    table = pa.table(
        {
            "path": ["astronaut.jpg", "coffee.jpg", "missing.jpg"],
            "text": ["an astronaut", "coffee", "gone"],
            "id": ["a1", "c2", "m3"],
            "score": [0.5, 0.9, 0.1],
        }
    )
    manifest = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        manifest.write_text(
            "path,text,id,score\n" + "\n".join(",".join(map(str, r.values())) for r in table.to_pylist())
        )
    else:
        pq.write_table(table, manifest)
    samples = samples_from_manifest(manifest, "path", "text", tmp_path / "photos", key_column="id")
    result = write_shards(samples, ShardSpec(out=str(tmp_path / "shards")))
    assert result["samples"] == 2 and result["missing_images"] == [str(tmp_path / "photos" / "missing.jpg")]
    with tarfile.open(result["shards"][0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("c2.json").read())
    assert names == ["a1.jpg", "a1.json", "a1.txt", "c2.jpg", "c2.json", "c2.txt"]
    assert meta == {"id": "c2", "score": 0.9, "source_path": "coffee.jpg"}


def test_manifest_errors_name_the_problem(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,caption,id\na.jpg,x,k.1\n")
    with pytest.raises(ValueError, match="no column"):
        list(samples_from_manifest(manifest, "image", "text", None))
    with pytest.raises(ValueError, match="row 1: key 'k.1'"):
        list(samples_from_manifest(manifest, "image", "caption", None, key_column="id"))
    manifest.write_text("image,caption,id\na.jpg,x,k\nb.jpg,y,k\n")
    with pytest.raises(ValueError, match="row 2: key 'k' repeats"):
        list(samples_from_manifest(manifest, "image", "caption", None, key_column="id"))
    with pytest.raises(ValueError, match="expected a .csv or .parquet"):
        list(samples_from_manifest(tmp_path / "m.txt", "image", "caption", None))
