"""Image-only data: ``--captions optional`` embeds a sample without a caption image-only, ``--captions none``
runs the image tower alone; the default still records a missing caption as an error that names the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed.cli import main
from mmembed.config import DecodeConfig
from mmembed.decode import decode_sample
from mmembed.makeshards import ShardSpec, samples_from_folder, write_shards
from mmembed.records import DecodedSample, RawSample, SampleError
from mmembed.schema import text_present
from tests.tarmaker import image_bytes

TINY = ["--model", "mmembed-tiny", "--random-init", "--device", "cpu", "--batch-size", "4"]


def raw_sample(members: dict[str, bytes]) -> RawSample:
    return RawSample("s", "k1", members, {name: 512 for name in members})


@pytest.fixture(scope="module")
def png() -> bytes:
    from PIL import Image

    return image_bytes(Image.new("RGB", (8, 8), (200, 10, 10)), "PNG")


def test_required_names_the_image_only_modes_in_its_fix(png: bytes) -> None:
    error = decode_sample(raw_sample({"png": png}), DecodeConfig())
    assert isinstance(error, SampleError) and error.code == "no_caption"
    assert "--captions optional" in error.reason and error.member == "k1.txt"


def test_optional_keeps_a_caption_and_allows_none(png: bytes) -> None:
    config = DecodeConfig(captions="optional")
    with_caption = decode_sample(raw_sample({"png": png, "txt": b" a red square "}), config)
    without = decode_sample(raw_sample({"png": png}), config)
    assert isinstance(with_caption, DecodedSample) and with_caption.caption == "a red square"
    assert isinstance(without, DecodedSample) and without.caption is None


def test_optional_still_refuses_a_caption_it_cannot_read(png: bytes) -> None:
    error = decode_sample(raw_sample({"png": png, "txt": b"\xff\xfe"}), DecodeConfig(captions="optional"))
    assert isinstance(error, SampleError) and error.code == "bad_caption_encoding"


def test_none_does_not_read_captions(png: bytes) -> None:
    sample = decode_sample(raw_sample({"png": png, "txt": b"\xff not even utf-8"}), DecodeConfig(captions="none"))
    assert isinstance(sample, DecodedSample) and sample.caption is None


@pytest.fixture(scope="module")
def half_captioned(demo_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], set[str]]:
    """The demo photos with every other caption file removed, as shards; and the keys left without a caption."""
    folder = tmp_path_factory.mktemp("half")
    shutil.copytree(demo_photos, folder, dirs_exist_ok=True)
    uncaptioned = set()
    for i, caption in enumerate(sorted(folder.rglob("*.txt"))):
        if i % 2:
            caption.unlink()
            uncaptioned.add(caption.stem)
    result = write_shards(samples_from_folder(folder), ShardSpec(out=str(folder / "shards"), samples_per_shard=10))
    assert result["no_caption"] == len(uncaptioned) > 0
    return result["shards"], uncaptioned


def embedded_rows(out: Path) -> dict[str, dict]:
    """key -> row of every embeddings file under ``out``."""
    table = pq.read_table(out / "embeddings")
    return {row["key"]: row for row in table.to_pylist()}


def test_optional_embeds_uncaptioned_samples_image_only(
    half_captioned: tuple[list[str], set[str]], tmp_path: Path
) -> None:
    shards, uncaptioned = half_captioned
    out = tmp_path / "optional"
    assert main(["embed", "--shards", *shards, "--out", str(out), "--captions", "optional", *TINY]) == 0
    rows = embedded_rows(out)
    assert pq.read_table(out / "errors").num_rows == 0
    image_only = {key for key, row in rows.items() if row["similarity"] is None}
    assert len(image_only) == len(uncaptioned) and len(rows) == 38
    table = pq.read_table(out / "embeddings")
    assert text_present(table.column("similarity")).tolist() == [c is not None for c in table["caption"].to_pylist()]
    for row in rows.values():
        has_text = row["similarity"] is not None
        assert has_text == (row["caption"] is not None)
        assert np.isclose(np.linalg.norm(row["image_embedding"]), 1, atol=1e-5)
        text_norm = np.linalg.norm(row["text_embedding"])
        assert np.isclose(text_norm, 1, atol=1e-5) if has_text else text_norm == 0  # image-only: zero vector
        if has_text:
            cosine = float(np.dot(row["image_embedding"], row["text_embedding"]))
            assert np.isclose(row["similarity"], cosine, atol=1e-5)


def test_none_runs_the_image_tower_only_with_the_same_image_vectors(
    half_captioned: tuple[list[str], set[str]], tmp_path: Path
) -> None:
    shards, _ = half_captioned
    optional, none = tmp_path / "optional", tmp_path / "none"
    assert main(["embed", "--shards", *shards, "--out", str(optional), "--captions", "optional", *TINY]) == 0
    assert main(["embed", "--shards", *shards, "--out", str(none), "--captions", "none", *TINY]) == 0
    with_text, image_only = embedded_rows(optional), embedded_rows(none)
    assert image_only.keys() == with_text.keys()
    assert all(row["caption"] is None and row["similarity"] is None for row in image_only.values())
    assert all(not any(row["text_embedding"]) for row in image_only.values())
    for key, row in image_only.items():  # the image tower sees the same batches either way: identical bits
        assert row["image_embedding"] == with_text[key]["image_embedding"]


def test_required_records_each_uncaptioned_sample_and_embeds_the_rest(
    half_captioned: tuple[list[str], set[str]], tmp_path: Path
) -> None:
    shards, uncaptioned = half_captioned
    out = tmp_path / "required"
    assert main(["embed", "--shards", *shards, "--out", str(out), *TINY]) == 0  # sample errors are recorded, not fatal
    errors = pq.read_table(out / "errors").to_pylist()
    assert {e["code"] for e in errors} == {"no_caption"} and len(errors) == len(uncaptioned)
    assert all(row["similarity"] is not None for row in embedded_rows(out).values())


def test_another_captions_mode_is_refused_on_resume(
    half_captioned: tuple[list[str], set[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards, _ = half_captioned
    out = tmp_path / "out"
    assert main(["embed", "--shards", *shards, "--out", str(out), "--captions", "optional", *TINY]) == 0
    capsys.readouterr()
    assert main(["embed", "--shards", *shards, "--out", str(out), "--captions", "none", *TINY]) == 2
    error = capsys.readouterr().err
    assert 'captions "optional", but this run has "none"' in error
    assert "to continue with the outputs there: --captions optional" in error
