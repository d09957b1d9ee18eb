"""The training run's settings as one frozen dataclass, checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmembed.config import ConfigError, DecodeConfig, EncoderConfig


@dataclass(frozen=True)
class TrainConfig:
    """What to train, on which shards, and how.

    ``init`` names the model and its starting weights (random init from a config name, an open_clip
    pretrained tag, or a checkpoint file to fine-tune); its device/precision/seed apply to training.
    The learning rate follows open_clip's cosine schedule with linear warm-up over the whole run.
    """

    shards: tuple[str, ...]
    out: str
    init: EncoderConfig = field(default_factory=EncoderConfig)  # the default pretrained model
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs when smaller)
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    betas: tuple[float, float] = (0.9, 0.98)  # open_clip's defaults for ViT models
    eps: float = 1e-6
    grad_clip_norm: float | None = 1.0
    augment: bool = True  # open_clip's training transform (random resized crop) instead of the eval one
    shuffle_buffer: int = 10_000
    checkpoint_every: int = 0  # steps between checkpoints; 0 = at the end of each epoch only
    keep_epoch_checkpoints: bool = False  # also keep checkpoints/epoch_<n>.pt (one full checkpoint per epoch)
    log_every: int = 20
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.shards:
            raise ConfigError("no training shards given; pass --shards 'data/shards/*.tar'")
        for name in ("epochs", "batch_size", "shuffle_buffer", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.weight_decay < 0:
            raise ConfigError("warmup steps, checkpoint interval and weight decay must be >= 0")
        if self.resume and self.overwrite:
            raise ConfigError("give either --resume (continue the run in --out) or --overwrite (start over), not both")
