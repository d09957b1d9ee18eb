"""The training run's settings as one frozen dataclass, checked when it is built; each field declares its
command-line option too (``mmembed.options``)."""

from __future__ import annotations

from dataclasses import dataclass

from mmembed.config import ConfigError, DecodeConfig, EncoderConfig
from mmembed.options import option


@dataclass(frozen=True)
class TrainConfig:
    """What to train, on which shards, and how.

    ``init`` names the model and its starting weights (random init from a config name, an open_clip
    pretrained tag, or a checkpoint file to fine-tune); its device/precision/seed apply to training.
    The learning rate follows open_clip's cosine schedule with linear warm-up over the whole run.
    """

    shards: tuple[str, ...] = option(metavar="SHARD", help="training shard paths, globs or {a..b} patterns")
    out: str = option(help="run folder: model.pt, checkpoints/, loss.png, metrics.jsonl")
    init: EncoderConfig = option(factory=EncoderConfig, help="model")  # the model to start from
    decode: DecodeConfig = option(factory=DecodeConfig, help="decoding")
    epochs: int = option(1, help="passes over the training shards")
    # stop after this many optimizer steps (overrides epochs when smaller)
    max_steps: int | None = option(None, help="stop after this many steps (the schedule ends there)")
    batch_size: int = option(256, aliases=("--batch_size",), help="samples per optimizer step")
    lr: float = option(1e-3, help="peak learning rate (cosine schedule)")
    weight_decay: float = option(0.1, help="AdamW weight decay")
    warmup_steps: int = option(50, help="linear warm-up steps")
    betas: tuple[float, float] = option((0.9, 0.98), flag="--adam-betas", help="AdamW betas (open_clip's for ViTs)")
    eps: float = option(1e-6, flag="--adam-eps", help="AdamW epsilon")
    grad_clip_norm: float | None = option(1.0, help="clip the gradient norm to this")
    # open_clip's training transform (random resized crop) instead of the eval one
    augment: bool = option(True, help="use the eval transform: no random crop")
    shuffle_buffer: int = option(10_000, help="samples in the shuffle buffer")
    checkpoint_every: int = option(0, help="steps between checkpoints (0: per epoch)")
    keep_epoch_checkpoints: bool = option(False, help="keep checkpoints/epoch_<n>.pt besides latest.pt")
    log_every: int = option(20, help="steps between progress lines")
    resume: bool = option(False, exclusive="run", help="continue the run in --out from checkpoints/latest.pt")
    overwrite: bool = option(False, exclusive="run", help="discard a run already in --out")

    def __post_init__(self) -> None:
        if not self.shards:
            raise ConfigError("no training shards given; pass --shards 'data/shards/*.tar'")
        for name in ("epochs", "batch_size", "shuffle_buffer", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.weight_decay < 0:
            raise ConfigError("--warmup-steps, --checkpoint-every and --weight-decay must be >= 0")
        if self.resume and self.overwrite:
            raise ConfigError("give either --resume (continue the run in --out) or --overwrite (start over), not both")
