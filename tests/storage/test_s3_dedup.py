"""``mmembed dedup`` and ``dedup --beam`` with ``s3://`` URLs only, against a real S3-protocol server on loopback:
embeddings and shards in a bucket, every output (duplicates, keep list, summary, histogram, clean shards) written
there, equal to the same run on the local disk; the Beam job's work dir is removed; a missing bucket is named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmembed import storage
from mmembed.cli import main
from mmembed.dedup.outputs import DUPLICATES_FILE, HISTOGRAM_FILE, KEEP_FILE, OUTPUT_FILES, SUMMARY_FILE
from tests.dedup.synth import near_copy, random_phash, write_dedup_dir
from tests.index.synth import blobs
from tests.tarmaker import write_tar

N, PER_SHARD = 200, 50
TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
OPTIONS = ["--n-clusters", "4", "--keep", "resolution", "--recall-queries", "50"]


def write_dataset(root: Path) -> None:
    """``root/emb``: 200 rows in 4 files with an exact copy (11 = 10), a pHash neighbour (21 ~ 20) and near
    vectors (31 ~ 30, 131 ~ 80, across files); ``root/shards``: the 4 WebDataset shards they were 'embedded'
    from (one jpg and txt member per row, bytes that name the row)."""
    rng = np.random.default_rng(0)
    image = blobs(N, 16, seed=1, centres=10)
    sha256 = [f"{r:064x}" for r in range(N)]
    phash = random_phash(N, seed=2)
    sha256[11], image[11], phash[11] = sha256[10], image[10], phash[10]
    phash[21] = phash[20] ^ np.uint64(0b111)
    image[31] = near_copy(image[30], 0.99, rng)
    image[131] = near_copy(image[80], 0.995, rng)
    write_dedup_dir(root / "emb", image, sha256=sha256, phash=phash, per_shard=PER_SHARD)
    for number, start in enumerate(range(0, N, PER_SHARD)):
        shard = f"shard-{number:05d}"
        members = []
        for r in range(start, start + PER_SHARD):
            key = f"{shard}-{r:06d}"
            members += [(f"{key}.jpg", f"jpeg bytes of row {r}".encode()), (f"{key}.txt", f"caption {r}".encode())]
        write_tar(root / "shards" / f"{shard}.tar", members)


@pytest.fixture(scope="module")
def dataset(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The dataset on the local disk and the same files uploaded to a new bucket: (local root, bucket URL)."""
    from tests.objectstore import create_bucket

    root = tmp_path_factory.mktemp("dedup-s3-source")
    write_dataset(root)
    bucket = create_bucket()
    for path in sorted(root.rglob("*.*")):
        storage.upload(str(path), f"{bucket}/{path.relative_to(root).as_posix()}")
    return str(root), bucket


def run_dedup_cli(root: str, out: str, beam: list[str]) -> dict[str, Any]:
    """``mmembed dedup`` over ``root``'s embeddings and shards (local or a bucket), all methods, clean shards
    to ``<out>/clean``; returns the printed summary."""
    argv = ["dedup", "--embeddings", storage.join(root, "emb"), "--out", storage.join(out, "dedup"), *OPTIONS]
    argv += ["--write-shards", storage.join(out, "clean"), "--shards", storage.join(root, "shards", "*.tar")]
    assert main([*argv, *beam]) == 0
    return json.loads(storage.read_bytes(storage.join(out, "dedup", SUMMARY_FILE)))


def read_parquet(url: str) -> Any:
    with storage.open_read(url) as f:
        return pq.read_table(f)


def comparable(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary without timing and counters, and its config without the paths."""
    config = {k: v for k, v in summary["config"].items() if k not in ("embeddings_dir", "out_dir")}
    return {k: v for k, v in summary.items() if k not in ("seconds", "beam_counters")} | {"config": config}


@pytest.mark.parametrize("beam", [[], ["--beam"]], ids=["single", "beam"])
def test_dedup_in_a_bucket_equals_the_local_run(
    dataset: tuple[str, str], tmp_path: Path, beam: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    local_root, bucket = dataset
    local = run_dedup_cli(local_root, str(tmp_path), beam)
    out = f"{bucket}/run-{'beam' if beam else 'single'}"
    remote = run_dedup_cli(bucket, out, beam + (TWO_WORKERS if beam else []))  # Beam workers in child processes
    capsys.readouterr()

    assert comparable(remote) == comparable(local)
    methods = remote["methods"]
    assert methods["exact"]["pairs"] == 1 and methods["perceptual"]["pairs"] == 2 and methods["semantic"]["pairs"] >= 2
    assert remote["removed"] >= 3 and remote["semantic"]["pair_recall"] is not None
    for name in (DUPLICATES_FILE, KEEP_FILE):
        assert read_parquet(f"{out}/dedup/{name}").equals(read_parquet(str(tmp_path / "dedup" / name))), name
    histogram = storage.read_bytes(f"{out}/dedup/{HISTOGRAM_FILE}")
    assert histogram[:8] == b"\x89PNG\r\n\x1a\n" and histogram == (tmp_path / "dedup" / HISTOGRAM_FILE).read_bytes()
    assert storage.glob(f"{out}/dedup/**") == sorted(f"{out}/dedup/{name}" for name in OUTPUT_FILES)  # no work dir

    clean = storage.glob(f"{out}/clean/*.tar")
    assert [url.rsplit("/", 1)[1] for url in clean] == sorted(p.name for p in (tmp_path / "clean").glob("*.tar"))
    for url in clean:
        assert storage.read_bytes(url) == (tmp_path / "clean" / url.rsplit("/", 1)[1]).read_bytes(), url
    assert read_parquet(f"{out}/dedup/{KEEP_FILE}").num_rows == N - remote["removed"]


@pytest.mark.parametrize(
    "where",
    [
        pytest.param({"emb": "s3://no-such-bucket-mmembed/emb"}, id="embeddings"),
        pytest.param({"out": "s3://no-such-bucket-mmembed/dedup"}, id="out"),
        pytest.param({"clean": "s3://no-such-bucket-mmembed/clean"}, id="write-shards"),
        pytest.param({"shards": "s3://no-such-bucket-mmembed/shards/*.tar"}, id="shards"),
    ],
)
def test_a_missing_bucket_is_named_before_the_run(
    dataset: tuple[str, str], where: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, bucket = dataset
    paths = {
        "emb": f"{bucket}/emb",
        "out": str(tmp_path / "dedup"),
        "clean": str(tmp_path / "clean"),
        "shards": f"{bucket}/shards/*.tar",
    } | where
    argv = ["dedup", "--embeddings", paths["emb"], "--out", paths["out"], "--methods", "exact", "--beam"]
    assert main([*argv, "--write-shards", paths["clean"], "--shards", paths["shards"]]) == 2
    assert "bucket 'no-such-bucket-mmembed' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "dedup").exists()  # nothing ran, nothing was written
