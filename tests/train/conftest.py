"""Fixtures for training tests: small shards of scikit-learn's real handwritten digits."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mmembed.config import DecodeConfig, EncoderConfig
from mmembed.labelled import labelled_samples, load
from mmembed.makeshards import ShardSpec, write_shards
from mmembed.train import TrainConfig

SMALL = EncoderConfig(model="mmembed-small", random_init=True, device="cpu", seed=0, torch_threads=1)


@pytest.fixture(scope="session")
def digit_shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """160 training digits in 4 shards of 40 (captioned from their class)."""
    out = tmp_path_factory.mktemp("digit-shards")
    samples = labelled_samples(load("digits", "train"), limit=160)
    return write_shards(samples, ShardSpec(out=str(out), samples_per_shard=40))["shards"]


def small_run(shards: list[str], out: Path, **overrides) -> TrainConfig:
    """A short, deterministic run: no augmentation and one data thread (so results repeat exactly)."""
    base = TrainConfig(
        shards=tuple(shards),
        out=str(out),
        init=SMALL,
        decode=DecodeConfig(threads=1),
        epochs=2,
        batch_size=32,
        lr=1e-3,
        warmup_steps=2,
        augment=False,
        shuffle_buffer=64,
        log_every=1,
    )
    return replace(base, **overrides)


class Interrupt(Exception):
    """Stands in for a crash in the middle of a run."""


def train_until_crash(config: TrainConfig, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``config`` and crash it (``Interrupt``) as its ``step``-th optimizer step begins; steps before it ran."""
    from mmembed.train.loop import Trainer, train

    real_step = Trainer.step
    calls = {"n": 0}

    def crashing_step(self, images, tokens):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == step:
            raise Interrupt
        return real_step(self, images, tokens)

    monkeypatch.setattr(Trainer, "step", crashing_step)
    with pytest.raises(Interrupt):
        train(config)
    monkeypatch.setattr(Trainer, "step", real_step)
