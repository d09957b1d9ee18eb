"""``train`` with a bucket (the real S3 server on loopback): shards read from it give exactly the run the same
shards give on the local disk; a run written into it resumes there, and its model embeds from there."""

from __future__ import annotations

import json
import posixpath
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from mmembed import storage
from mmembed.cli import main
from mmembed.train.loop import train
from mmembed.train.run_files import RunFiles
from tests.train.conftest import small_run, train_until_crash


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_reads_shards_from_a_bucket(digit_shards: list[str], bucket: str, tmp_path: Path) -> None:
    remote = []
    for shard in digit_shards:
        remote.append(f"{bucket}/digits/{posixpath.basename(shard)}")
        storage.upload(shard, remote[-1])
    local_run = train(replace(small_run(digit_shards, tmp_path / "local"), max_steps=4))
    remote_run = train(replace(small_run([f"{bucket}/digits/*.tar"], tmp_path / "remote"), max_steps=4))
    assert remote_run["steps"] == local_run["steps"] == 4
    assert losses(tmp_path / "remote") == losses(tmp_path / "local")  # same samples, same order, same steps


def test_a_run_in_a_bucket_resumes_there_and_its_model_embeds(
    digit_shards: list[str], bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = f"{bucket}/run"
    config = replace(small_run(digit_shards, run), max_steps=5, checkpoint_every=2)
    train_until_crash(config, 4, monkeypatch)
    published = storage.read_bytes(f"{run}/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in published] == [1, 2]  # published with the step-2 checkpoint
    assert storage.read_bytes(f"{run}/loss.png").startswith(b"\x89PNG")
    shutil.rmtree(Path(RunFiles(run).local_metrics).parent)  # resume as another machine would: no local copy

    resumed = train(replace(config, resume=True))
    assert resumed["steps"] == 5 and resumed["model_file"] == f"{run}/model.pt"
    names = {u.rsplit("/", 1)[-1] for u in storage.glob(f"{run}/*")}
    assert names == {"model.pt", "summary.json", "metrics.jsonl", "loss.png", "errors.parquet"}
    metrics = [json.loads(line) for line in storage.read_bytes(f"{run}/metrics.jsonl").decode().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]  # no step logged twice, none lost
    train(replace(small_run(digit_shards, tmp_path / "uninterrupted"), max_steps=5, checkpoint_every=2))
    assert [m["loss"] for m in metrics] == pytest.approx(losses(tmp_path / "uninterrupted"), rel=1e-5)

    emb = tmp_path / "emb"
    assert main(["embed", "--shards", digit_shards[0], "--out", str(emb), "--checkpoint", f"{run}/model.pt"]) == 0
    provenance = json.loads((emb / "summary.json").read_text())["provenance"]
    assert provenance["checkpoint"] == f"{run}/model.pt" and provenance["checkpoint_sha256"] == resumed["model_sha256"]
