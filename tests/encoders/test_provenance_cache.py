"""The on-disk provenance cache: equal to a fresh computation, recomputed when a file it read changes, and what
lets an embed run with nothing to do finish without importing torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import open_clip
import pytest
import torch

from mmembed.config import EncoderConfig
from mmembed.encoders import provenance_cache
from mmembed.encoders.openclip import provenance
from mmembed.encoders.provenance_cache import encoder_provenance
from tests.helpers import embed

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MMEMBED_CACHE", str(cache))
    return cache


def _entries(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "provenance").glob("*.json"))


def test_cached_provenance_equals_a_fresh_one(tiny_config: EncoderConfig, tmp_path: Path) -> None:
    first = encoder_provenance(tiny_config)
    assert len(_entries(tmp_path)) == 1
    assert encoder_provenance(tiny_config) == first == provenance(tiny_config)
    assert encoder_provenance(replace(tiny_config, seed=7))["init_seed"] == 7  # another setting, another entry
    assert len(_entries(tmp_path)) == 2


def test_a_rewritten_checkpoint_is_hashed_again(tiny_config: EncoderConfig, tmp_path: Path) -> None:
    model = open_clip.create_model(tiny_config.model)
    checkpoint = tmp_path / "weights.pt"
    torch.save(model.state_dict(), checkpoint)
    config = replace(tiny_config, checkpoint=str(checkpoint), random_init=False)
    before = encoder_provenance(config)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    torch.save(model.state_dict(), checkpoint)
    os.utime(checkpoint, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    after = encoder_provenance(config)
    assert after["checkpoint_sha256"] != before["checkpoint_sha256"]
    assert after == provenance(config)


def test_a_damaged_entry_is_recomputed(tiny_config: EncoderConfig, tmp_path: Path) -> None:
    expected = encoder_provenance(tiny_config)
    (entry,) = _entries(tmp_path)
    entry.write_text("{not json")
    assert encoder_provenance(tiny_config) == expected
    assert json.loads(entry.read_text())["provenance"] == expected


def test_key_changes_with_the_open_clip_version(tiny_config: EncoderConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    before = provenance_cache._fingerprint(tiny_config)
    monkeypatch.setattr(provenance_cache, "OPEN_CLIP_DISTRIBUTION", "torch")  # any other installed version
    assert provenance_cache._fingerprint(tiny_config)["open_clip"] != before["open_clip"]


def test_embed_with_every_shard_complete_imports_no_torch(
    demo_shards: list[str], tiny_config: EncoderConfig, tmp_path: Path
) -> None:
    out = tmp_path / "emb"
    embed(demo_shards[:1], out, tiny_config)
    shutil.rmtree(tmp_path / "cache")
    probe = (
        "import sys; from mmembed.cli import main; status = main(sys.argv[1:]); "
        "heavy = sorted(m for m in ('torch', 'open_clip', 'apache_beam') if m in sys.modules); "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(status)"
    )
    args = ["embed", "--shards", demo_shards[0], "--out", str(out), "--model", tiny_config.model]
    args += ["--random-init", "--device", "cpu", "--seed", str(tiny_config.seed)]
    for expected in ("['open_clip', 'torch']", "[]"):  # the first run computes provenance, the second reads it
        done = subprocess.run([sys.executable, "-c", probe, *args], cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["shards_skipped"] == 1
        assert f"HEAVY {expected}" in done.stderr
