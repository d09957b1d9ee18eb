"""`mmembed train` on the command line: options reach the run, and the result embeds through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmembed.cli import main


def test_train_then_embed_on_the_command_line(
    digit_shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    argv = ["train", "--shards", *digit_shards, "--out", str(run), "--batch-size", "32", "--max-steps", "3"]
    argv += ["--model", "mmembed-small", "--random-init"]
    assert main([*argv, "--torch-threads", "1", "--no-augment", "--lr", "5e-4", "--log-every", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["model_file"] == str(run / "model.pt")
    meta_train = json.loads((run / "summary.json").read_text())
    assert meta_train["samples_trained"] == 96

    emb = tmp_path / "emb"
    # No --model: the checkpoint names the model it was trained as.
    assert main(["embed", "--shards", digit_shards[0], "--out", str(emb), "--checkpoint", str(run / "model.pt")]) == 0
    prov = json.loads((emb / "summary.json").read_text())["provenance"]
    assert prov["model"] == "mmembed-small" and prov["dim"] == 128
    assert prov["trained"]["steps"] == 3 and prov["checkpoint_sha256"] == summary["model_sha256"]


def test_resume_and_overwrite_together_are_refused(digit_shards: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--shards", *digit_shards, "--out", str(tmp_path), "--resume", "--overwrite"])


def test_cuda_asked_for_without_cuda_fails_at_once(
    digit_shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["train", "--shards", *digit_shards, "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "r" / "model.pt").exists()
