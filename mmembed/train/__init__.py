"""Contrastive (CLIP) training and fine-tuning of OpenCLIP models on WebDataset shards."""

from mmembed.train.config import TrainConfig
from mmembed.train.loop import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
