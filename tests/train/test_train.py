"""mmembed train: contrastive training on shards, checkpoints that embed, resume, bad samples."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from mmembed.config import ConfigError, EncoderConfig
from mmembed.encoders.openclip import OpenClipEncoder, checkpoint_meta, provenance
from mmembed.train import train
from tests.helpers import embed, read_dir
from tests.tarmaker import sample_members, write_tar
from tests.train.conftest import SMALL, small_run, train_until_crash


def test_run_writes_model_checkpoints_metrics_and_plot(digit_shards: list[str], tmp_path: Path) -> None:
    summary = train(small_run(digit_shards, tmp_path / "run", keep_epoch_checkpoints=True))
    run = tmp_path / "run"
    assert summary["steps"] == 2 * (160 // 32) and summary["epochs_completed"] == 2
    assert summary["samples_per_epoch"] == 160 and summary["errors"] == 0
    assert (run / "checkpoints" / "epoch_1.pt").is_file() and (run / "checkpoints" / "epoch_2.pt").is_file()
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 11))
    assert json.loads((run / "summary.json").read_text())["model_sha256"] == summary["model_sha256"]

    meta = checkpoint_meta(run / "model.pt")
    assert meta["model"] == "mmembed-small" and meta["step"] == 10 and meta["init_weights"] == "random-init"
    assert meta["train"]["shards"] == digit_shards


def test_loss_falls_while_training(digit_shards: list[str], tmp_path: Path) -> None:
    train(small_run(digit_shards, tmp_path / "run", epochs=10, warmup_steps=10))
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3


def test_trained_checkpoint_embeds_with_its_provenance(digit_shards: list[str], tmp_path: Path) -> None:
    train(small_run(digit_shards, tmp_path / "run"))
    model_file = tmp_path / "run" / "model.pt"
    trained = replace(SMALL, checkpoint=str(model_file), random_init=False)
    summary = embed(digit_shards[:1], tmp_path / "emb", trained)
    assert summary["embedded"] == 40

    prov = summary["provenance"]
    assert prov["model"] == "mmembed-small" and prov["checkpoint"] == str(model_file.resolve())
    assert prov["weights"] == f"checkpoint-sha256:{prov['checkpoint_sha256']}"
    assert prov["trained"]["steps"] == 10 and prov["trained"]["init_weights"] == "random-init"

    # The rows hold the trained weights' embeddings, not the random init's.
    rows = read_dir(tmp_path / "emb" / "embeddings")
    stored = np.array(rows.column("image_embedding").to_pylist(), dtype=np.float32)
    pixels = np.zeros((1, 32, 32, 3), np.uint8)
    trained_out = OpenClipEncoder.load(trained).embed_pixels(pixels)
    random_out = OpenClipEncoder.load(SMALL).embed_pixels(pixels)
    assert not np.allclose(trained_out, random_out, atol=1e-3)
    assert stored.shape == (40, 128)


def test_checkpoint_under_another_model_name_is_refused(digit_shards: list[str], tmp_path: Path) -> None:
    train(small_run(digit_shards, tmp_path / "run", max_steps=1))
    with pytest.raises(ConfigError, match="trained as model 'mmembed-small'.*--model mmembed-small"):
        provenance(EncoderConfig(model="mmembed-tiny", checkpoint=str(tmp_path / "run" / "model.pt")))


def test_resume_mid_epoch_equals_an_uninterrupted_run(
    digit_shards: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = train(small_run(digit_shards, tmp_path / "whole", checkpoint_every=3))

    train_until_crash(small_run(digit_shards, tmp_path / "split", checkpoint_every=3), 8, monkeypatch)
    latest = torch.load(tmp_path / "split" / "checkpoints" / "latest.pt", weights_only=True)
    assert latest["mmembed"]["step"] == 6 and latest["mmembed"]["epoch"] == 1 and latest["mmembed"]["position"] > 0

    resumed = train(small_run(digit_shards, tmp_path / "split", checkpoint_every=3, resume=True))
    assert resumed["steps"] == whole["steps"] == 10
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))  # the steps after the checkpoint were logged once, not twice
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == ["latest.pt"]
    a = torch.load(tmp_path / "whole" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "split" / "model.pt", weights_only=True)["state_dict"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)


def test_existing_run_needs_resume_or_overwrite(digit_shards: list[str], tmp_path: Path) -> None:
    train(small_run(digit_shards, tmp_path / "run", max_steps=1))
    with pytest.raises(ConfigError, match="already holds a training run.*--resume.*--overwrite"):
        train(small_run(digit_shards, tmp_path / "run", max_steps=1))
    assert train(small_run(digit_shards, tmp_path / "run", max_steps=2, overwrite=True))["steps"] == 2


def test_resume_with_other_settings_is_refused(digit_shards: list[str], tmp_path: Path) -> None:
    train(small_run(digit_shards, tmp_path / "run", max_steps=2))
    with pytest.raises(ConfigError, match="other settings.*lr"):
        train(small_run(digit_shards, tmp_path / "run", max_steps=2, lr=5e-4, resume=True))


def test_fine_tune_starts_from_a_checkpoint(digit_shards: list[str], tmp_path: Path) -> None:
    train(small_run(digit_shards, tmp_path / "base", max_steps=2))
    base = tmp_path / "base" / "model.pt"
    start = replace(SMALL, checkpoint=str(base), random_init=False)
    tuned = train(small_run(digit_shards, tmp_path / "tuned", max_steps=2, init=start))
    meta = checkpoint_meta(tuned["model_file"])
    assert meta["init_weights"] == provenance(start)["weights"]
    assert meta["init_checkpoint"] == str(base)


def test_bad_samples_are_recorded_and_training_goes_on(digit_shards: list[str], tmp_path: Path) -> None:
    bad = write_tar(
        tmp_path / "bad.tar",
        [("broken.png", b"not an image"), ("broken.txt", b"a broken image")]
        + [("nocaption.jpg", sample_members("x")[0][1])],
    )
    summary = train(small_run([*digit_shards, str(bad)], tmp_path / "run", max_steps=3))
    assert summary["errors"] == 2
    errors = pq.read_table(tmp_path / "run" / "errors.parquet").to_pylist()
    assert {e["code"] for e in errors} == {"bad_image", "no_caption"}
    assert all("bad" in e["reason"] for e in errors)  # names the shard


def test_fewer_samples_than_a_batch_is_a_clear_error(digit_shards: list[str], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fewer than one batch.*--batch-size"):
        train(small_run(digit_shards[:1], tmp_path / "run", batch_size=64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda_with_autocast(digit_shards: list[str], tmp_path: Path) -> None:
    config = small_run(digit_shards, tmp_path / "run", max_steps=3, init=replace(SMALL, device="cuda"))
    summary = train(config)
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
