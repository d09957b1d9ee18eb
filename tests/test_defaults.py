"""Defaults that cannot quietly ruin a dataset: the default model is a real pretrained one, random weights only
on request (--random-init) and recorded, every reader of such vectors says so, and semantic dedup refuses them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmembed.cli import main
from mmembed.config import DEFAULT_MODEL, DEFAULT_PRETRAINED, ConfigError, EncoderConfig
from mmembed.schema import _warned_random
from tests.conftest import TINY
from tests.helpers import embed


def test_the_default_model_is_pretrained_and_random_weights_must_be_asked_for() -> None:
    default = EncoderConfig()
    assert (default.model, default.pretrained, default.random_init) == (DEFAULT_MODEL, DEFAULT_PRETRAINED, False)
    assert EncoderConfig(model=DEFAULT_MODEL, random_init=True).pretrained is None
    with pytest.raises(ConfigError, match=r"'mmembed-tiny' has no weights.*--random-init"):
        EncoderConfig(model="mmembed-tiny")
    with pytest.raises(ConfigError, match="--random-init asks for random weights"):
        EncoderConfig(model="ViT-B-32", pretrained="openai", random_init=True)


@pytest.mark.parametrize("command", ["embed", "train"])
def test_without_the_weights_offline_the_command_stops_before_creating_anything(
    command: str, demo_shards: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main([command, "--shards", demo_shards[0], "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"the weights of {DEFAULT_MODEL} ({DEFAULT_PRETRAINED}) are not in the local cache" in err
    for way in ("--checkpoint FILE", "--model local-dir:DIR", "--random-init"):
        assert way in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 6
    assert not out.exists()


@pytest.fixture(scope="module")
def random_embeddings(demo_shards: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("random-emb")
    embed(demo_shards[:2], out, TINY)
    return out


def test_readers_of_random_weight_vectors_warn_once(
    random_embeddings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = json.loads((random_embeddings / "summary.json").read_text())
    assert summary["provenance"]["weights"] == "random-init"
    for argv in (
        ["index", "--embeddings", str(random_embeddings), "--out", str(tmp_path / "index")],
        ["search", "a cat", "--index", str(tmp_path / "index"), "-k", "2"],
        ["eval-index", "--index", str(tmp_path / "index"), "--queries", "5"],
    ):
        _warned_random.clear()  # once per process: each command is a process of its own
        assert main(argv) == 0
        warnings = [line for line in capsys.readouterr().err.splitlines() if "with random weights" in line]
        assert len(warnings) == 1 and "mmembed-tiny" in warnings[0], argv


def test_semantic_dedup_refuses_random_weights_unless_allowed(
    random_embeddings: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["dedup", "--embeddings", str(random_embeddings), "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "a"), "--methods", "exact,semantic"]) == 2
    assert "--allow-random-weights" in capsys.readouterr().err
    assert not (tmp_path / "a" / "summary.json").exists()

    assert main([*base, "--out", str(tmp_path / "b")]) == 0  # no --methods: exact and perceptual only, said so
    captured = capsys.readouterr()
    assert "only exact,perceptual run" in captured.err
    assert set(json.loads(captured.out)["methods"]) == {"exact", "perceptual"}

    argv = [*base, "--out", str(tmp_path / "c"), "--methods", "semantic", "--allow-random-weights"]
    assert main([*argv, "--n-clusters", "2"]) == 0
    assert "semantic" in json.loads(capsys.readouterr().out)["methods"]
