"""Contrastive (CLIP) training and fine-tuning of OpenCLIP models on WebDataset shards.

The names below load on first use, so ``mmembed --help`` can import ``mmembed.train.config`` without torch."""

from mmembed.lazy import lazy_exports

_HOMES = {"TrainConfig": "mmembed.train.config", "Trainer": "mmembed.train.loop", "train": "mmembed.train.loop"}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
