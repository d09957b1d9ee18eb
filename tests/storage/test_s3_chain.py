"""The whole chain with ``s3://`` URLs only, against a real S3-protocol server on loopback: make-shards into a
bucket, embed from it into it (two worker processes), resume there, and the same rows as on the local disk."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmembed import storage
from mmembed.cli import main

TINY = ["--model", "mmembed-tiny", "--random-init", "--device", "cpu", "--batch-size", "8"]
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def read_rows(folder: str) -> list[dict]:
    """Every embeddings row under ``folder`` (local or remote), in shard then tar order."""
    rows = []
    for url in storage.glob(storage.join(folder, "embeddings", "*.parquet")):
        with storage.open_read(url) as f:
            rows += pq.read_table(f).to_pylist()
    return rows


@pytest.fixture(scope="module")
def local_reference(demo_photos: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The demo photos made into shards and embedded on the local disk."""
    root = tmp_path_factory.mktemp("local")
    assert (
        main(["make-shards", "--images", str(demo_photos), "--out", str(root / "shards"), "--samples-per-shard", "10"])
        == 0
    )
    shards = str(root / "shards" / "*.tar")
    assert main(["embed", "--shards", shards, "--out", str(root / "emb"), *TINY]) == 0
    return str(root / "emb")


def test_make_shards_and_embed_in_a_bucket(
    demo_photos: Path, bucket: str, local_reference: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = f"{bucket}/shards"
    assert main(["make-shards", "--images", str(demo_photos), "--out", shards, "--samples-per-shard", "10"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["shards"] == storage.glob(f"{shards}/*.tar") and len(made["shards"]) == 4
    assert main(["make-shards", "--images", str(demo_photos), "--out", shards]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err

    out = f"{bucket}/emb"
    assert main(["embed", "--shards", f"{shards}/*.tar", "--out", out, *TINY, *TWO_WORKERS]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["embedded"] == 38 and summary["shards_processed"] == 4
    assert json.loads(storage.read_bytes(f"{out}/summary.json"))["embedded"] == 38
    assert read_rows(out) == read_rows(local_reference)  # bit for bit: vectors, keys, shards, captions

    assert main(["embed", "--shards", f"{shards}/*.tar", "--out", out, *TINY]) == 0  # resume: nothing to redo
    again = json.loads(capsys.readouterr().out)
    assert again["shards_skipped"] == 4 and again["samples_processed_this_run"] == 0


def test_embed_names_a_missing_bucket(
    s3_endpoint: str, demo_shards: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["embed", "--shards", "s3://no-such-bucket-mmembed/shards/*.tar", "--out", "/tmp/x", *TINY]) == 2
    assert "bucket 'no-such-bucket-mmembed' does not exist" in capsys.readouterr().err
    assert main(["embed", "--shards", demo_shards[0], "--out", "s3://no-such-bucket-mmembed/emb", *TINY]) == 2
    assert "bucket 'no-such-bucket-mmembed' does not exist" in capsys.readouterr().err  # before any work
