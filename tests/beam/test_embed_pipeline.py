"""The embed job end to end on Beam's offline runner: equal to direct open_clip, nothing lost, resumable."""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from mmembed.config import DecodeConfig, EncoderConfig
from mmembed.encoders.openclip import register_bundled_configs
from mmembed.schema import read_provenance
from tests.helpers import embed, read_dir
from tests.tarmaker import image_bytes, jpeg_bytes, sample_members, write_tar


def open_clip_reference(shards: list[str], config: EncoderConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (image, text) embeddings computed the plain open_clip way, straight from the tar members."""
    register_bundled_configs()
    torch.manual_seed(config.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(config.model)
    model.eval()
    tokenizer = open_clip.get_tokenizer(config.model)
    result = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            key, ext = name.split(".", 1)
            if ext not in ("jpg", "png"):
                continue
            image = preprocess(Image.open(io.BytesIO(data)).convert("RGB"))[None]
            with torch.no_grad():
                img = torch.nn.functional.normalize(model.encode_image(image), dim=-1)[0].numpy()
                txt = model.encode_text(tokenizer([members[f"{key}.txt"].decode().strip()]))
                txt = torch.nn.functional.normalize(txt, dim=-1)[0].numpy()
            result[f"{Path(shard).stem}/{key}"] = (img, txt)
    return result


@pytest.fixture(scope="module")
def embedded(demo_shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("emb")
    config = EncoderConfig(model="mmembed-tiny", random_init=True, device="cpu", batch_size=8, seed=0)
    summary = embed(demo_shards, out, config, decode=DecodeConfig(exact_decode=True))  # exactly open_clip's path
    return out, summary


def test_pipeline_embeddings_equal_direct_open_clip(embedded: tuple[Path, dict], demo_shards: list[str]) -> None:
    out, _ = embedded
    table = read_dir(out / "embeddings")
    reference = open_clip_reference(demo_shards, EncoderConfig(model="mmembed-tiny", random_init=True, seed=0))
    assert table.num_rows == len(reference) == 38
    rows = table.to_pylist()
    for row in rows:
        want_image, want_text = reference[f"{row['shard']}/{row['key']}"]
        np.testing.assert_allclose(row["image_embedding"], want_image, atol=2e-5)
        np.testing.assert_allclose(row["text_embedding"], want_text, atol=2e-5)
        assert row["similarity"] == pytest.approx(float(np.dot(want_image, want_text)), abs=1e-4)


def test_the_default_reduced_scale_decode_stays_close_to_open_clip(demo_shards: list[str], tmp_path: Path) -> None:
    config = EncoderConfig(model="mmembed-tiny", random_init=True, device="cpu", batch_size=8, seed=0)
    summary = embed(demo_shards, tmp_path, config)
    assert summary["provenance"]["jpeg_decode"] == "reduced-scale"
    reference = open_clip_reference(demo_shards, EncoderConfig(model="mmembed-tiny", random_init=True, seed=0))
    rows = read_dir(tmp_path / "embeddings").to_pylist()
    cosines = [float(np.dot(r["image_embedding"], reference[f"{r['shard']}/{r['key']}"][0])) for r in rows]
    assert len(cosines) == 38 and min(cosines) > 0.995  # the tiny random model is the sensitive case
    assert any(c < 1 - 1e-6 for c in cosines)  # some photos were decoded at reduced scale


def test_rows_carry_metadata_hashes_and_offsets(embedded: tuple[Path, dict], demo_shards: list[str]) -> None:
    out, _ = embedded
    shard = demo_shards[0]
    table = pq.read_table(out / "embeddings" / f"{Path(shard).stem}.parquet")
    data = Path(shard).read_bytes()
    for row in table.to_pylist():
        meta = json.loads(row["metadata"])
        assert meta["source"].startswith("skimage.data.") and row["caption"]
        image = Image.open(io.BytesIO(data[row["offset"] :]))  # a seek to the offset finds the image
        assert image.size == (row["width"], row["height"])
        member = data[row["offset"] : row["offset"] + 64]
        assert member[:2] in (b"\xff\xd8", b"\x89P")
    norms = np.linalg.norm(np.stack(table.column("image_embedding").to_numpy(zero_copy_only=False)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_provenance_and_summary(embedded: tuple[Path, dict], demo_shards: list[str]) -> None:
    out, summary = embedded
    prov = read_provenance(pq.read_schema(out / "embeddings" / f"{Path(demo_shards[0]).stem}.parquet"))
    assert prov["model"] == "mmembed-tiny" and prov["dim"] == 64 and prov["normalized"] is True
    assert (
        prov["dtype"] == "float32" and prov["weights"] == "random-init" and prov["preprocessing"]["size"] == [224, 224]
    )
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["samples_in"] == on_disk["embedded"] == 38 and on_disk["errors"] == 0
    assert summary["shards"] == 4 and summary["samples_per_second"] > 0
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temp file left behind


def test_float16_output(demo_shards: list[str], tmp_path: Path, tiny_config: EncoderConfig) -> None:
    from mmembed.config import EmbedJobConfig
    from mmembed.embed.job import run_job
    from tests.helpers import offline_test_pipeline

    config = EmbedJobConfig(shards=(demo_shards[0],), out=str(tmp_path), encoder=tiny_config, output_dtype="float16")
    run_job(config, test_pipeline=offline_test_pipeline())
    table = read_dir(tmp_path / "embeddings")
    vector_type = table.schema.field("image_embedding").type
    assert vector_type.value_type == pa.float16() and vector_type.list_size == 64


VECTOR_COLUMNS = ("image_embedding", "text_embedding", "similarity")


def assert_same_rows(actual: pa.Table, expected: pa.Table) -> None:
    """Same rows in the same order; vectors equal to float rounding (batch composition may differ)."""
    assert actual.schema.equals(expected.schema, check_metadata=True)
    assert actual.drop_columns(list(VECTOR_COLUMNS)).equals(expected.drop_columns(list(VECTOR_COLUMNS)))
    for name in VECTOR_COLUMNS:
        a, b = (np.stack(t.column(name).to_numpy(zero_copy_only=False)) for t in (actual, expected))
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_resume_redoes_only_missing_shards_with_identical_results(
    demo_shards: list[str], tmp_path: Path, tiny_config: EncoderConfig
) -> None:
    first = embed(demo_shards, tmp_path, tiny_config)
    before = read_dir(tmp_path / "embeddings")
    victim = Path(demo_shards[1]).stem
    kept = tmp_path / "embeddings" / f"{Path(demo_shards[0]).stem}.parquet"
    os.utime(kept, ns=(1, 1))  # an old mtime: if the shard were rewritten, it would change
    (tmp_path / "embeddings" / f"{victim}.parquet").unlink()
    (tmp_path / "errors" / f"{victim}.parquet").unlink()

    second = embed(demo_shards, tmp_path, tiny_config)
    assert second["shards_processed"] == 1 and second["shards_skipped"] == 3
    assert second["samples_processed_this_run"] == 10
    assert kept.stat().st_mtime_ns == 1
    assert_same_rows(read_dir(tmp_path / "embeddings"), before)
    assert second["samples_in"] == first["samples_in"] == 38

    third = embed(demo_shards, tmp_path, tiny_config, overwrite=True)
    assert third["shards_processed"] == 4 and kept.stat().st_mtime_ns != 1
    assert_same_rows(read_dir(tmp_path / "embeddings"), before)


def test_half_written_shard_is_redone(demo_shards: list[str], tmp_path: Path, tiny_config: EncoderConfig) -> None:
    """A shard whose errors file (written last) is missing counts as incomplete."""
    embed(demo_shards[:2], tmp_path, tiny_config)
    (tmp_path / "errors" / f"{Path(demo_shards[0]).stem}.parquet").unlink()
    summary = embed(demo_shards[:2], tmp_path, tiny_config)
    assert summary["shards_processed"] == 1 and summary["embedded"] == 20


def build_bad_shards(folder: Path) -> tuple[list[str], int]:
    """Shards with every kind of bad input next to good samples; returns (paths, samples in them)."""
    bomb = image_bytes(Image.new("L", (3000, 3000)), "PNG")
    mixed = [
        *sample_members("good-0", "astronaut", "an astronaut"),
        ("trunc-jpeg.jpg", jpeg_bytes("coffee")[:500]),
        ("trunc-jpeg.txt", b"cut short"),
        ("zero.jpg", b""),
        ("zero.txt", b"empty file"),
        ("textfile.jpg", b"I am text, not a JPEG\n"),
        ("textfile.txt", b"a text file named .jpg"),
        ("bomb.png", bomb),
        ("bomb.txt", b"a huge blank image"),
        ("nocaption.jpg", jpeg_bytes("chelsea")),
        ("latin1.jpg", jpeg_bytes("rocket")),
        ("latin1.txt", "caf\xe9".encode("latin-1")),
        ("badjson.jpg", jpeg_bytes("horse")),
        ("badjson.txt", b"a horse"),
        ("badjson.json", b"{'single': quotes}"),
        ("captiononly.txt", b"a caption with no image"),
        *sample_members("good-1", "coffee", "a cup of coffee"),
        *sample_members("good-0", "camera", "the same key again"),
    ]
    mixed_path = write_tar(folder / "mixed.tar", mixed)
    truncated = write_tar(folder / "truncated.tar", [*sample_members("t0", "moon"), *sample_members("t1", "coins")])
    with tarfile.open(truncated) as tar:
        cut = tar.getmember("t1.jpg").offset_data + 200
    truncated.write_bytes(truncated.read_bytes()[:cut])  # the shard ends inside t1's image
    not_tar = folder / "nottar.tar"
    not_tar.write_bytes(b"<html>404 not found</html>\n" * 50)
    empty = write_tar(folder / "empty.tar", [])
    good = write_tar(folder / "good.tar.gz", sample_members("g0", "chelsea", "a cat"), gzip=True)
    # samples: mixed has 11 (good-0 twice); truncated has t0 complete + t1 broken; good has 1.
    return [str(p) for p in (mixed_path, truncated, not_tar, empty, good)], 11 + 2 + 1


def test_bad_input_is_recorded_and_nothing_is_lost(tmp_path: Path, tiny_config: EncoderConfig) -> None:
    shards, samples_in = build_bad_shards(tmp_path / "in")
    summary = embed(shards, tmp_path / "out", tiny_config, decode=DecodeConfig(max_image_pixels=4_000_000))

    embedded = read_dir(tmp_path / "out" / "embeddings").to_pylist()
    errors = read_dir(tmp_path / "out" / "errors").to_pylist()
    assert sorted((r["shard"], r["key"]) for r in embedded) == [
        ("good", "g0"),
        ("mixed", "good-0"),
        ("mixed", "good-1"),
        ("truncated", "t0"),
    ]
    sample_errors = {(e["shard"], e["key"]): e for e in errors if e["key"] is not None}
    expected_codes = {
        ("mixed", "trunc-jpeg"): "bad_image",
        ("mixed", "zero"): "empty_image",
        ("mixed", "textfile"): "bad_image",
        ("mixed", "bomb"): "image_too_large",
        ("mixed", "nocaption"): "no_caption",
        ("mixed", "latin1"): "bad_caption_encoding",
        ("mixed", "badjson"): "bad_metadata",
        ("mixed", "captiononly"): "no_image",
        ("mixed", "good-0"): "duplicate_key",
        ("truncated", "t1"): "incomplete_sample",
    }
    assert {k: e["code"] for k, e in sample_errors.items()} == expected_codes
    for (shard, _key), error in sample_errors.items():
        assert f"shard {shard}" in error["reason"] and error["member"] and error["member"] in error["reason"]
    shard_errors = {e["shard"]: e["code"] for e in errors if e["key"] is None}
    assert shard_errors == {"truncated": "truncated_shard", "nottar": "not_a_tar"}

    # samples in = rows embedded + rows in errors, in the summary too.
    assert len(embedded) + len(sample_errors) == samples_in
    assert summary["samples_in"] == samples_in and summary["embedded"] == 4 and summary["errors"] == len(expected_codes)
    assert summary["errors_by_reason"]["bad_image"] == 2
    assert summary["failed_shards"] == ["nottar", "truncated"]
    counters = summary["beam_counters"]  # Beam's counters tell the same story as the files
    assert (counters["samples_in"], counters["embedded"], counters["sample_errors"]) == (samples_in, 4, 10)
    assert counters["shard_errors"] == 2 and counters["errors.bad_image"] == 2
    assert (tmp_path / "out" / "embeddings" / "empty.parquet").is_file()  # an empty shard is complete, not missing


def test_missing_shard_file_is_recorded(tmp_path: Path, tiny_config: EncoderConfig, demo_shards: list[str]) -> None:
    summary = embed([demo_shards[0], str(tmp_path / "gone.tar")], tmp_path / "out", tiny_config)
    assert summary["embedded"] == 10 and summary["shard_errors"] == {"unreadable_shard": 1}
    errors = read_dir(tmp_path / "out" / "errors").to_pylist()
    assert "gone.tar" in errors[0]["reason"]


def test_batch_size_does_not_change_results(demo_shards: list[str], tmp_path: Path, tiny_config: EncoderConfig) -> None:
    embed(demo_shards[:1], tmp_path / "a", replace(tiny_config, batch_size=1))
    embed(demo_shards[:1], tmp_path / "b", replace(tiny_config, batch_size=7))
    a, b = read_dir(tmp_path / "a" / "embeddings"), read_dir(tmp_path / "b" / "embeddings")
    np.testing.assert_allclose(
        np.stack(a.column("image_embedding").to_numpy(zero_copy_only=False)),
        np.stack(b.column("image_embedding").to_numpy(zero_copy_only=False)),
        atol=1e-5,
    )
