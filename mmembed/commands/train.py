"""``train``: contrastive training or fine-tuning of an OpenCLIP model on WebDataset shards. Its options are
``TrainConfig``'s fields (``mmembed.stages``)."""

from __future__ import annotations

import argparse

from mmembed.commands.output import print_json
from mmembed.stages import config_of, stage


def train(args: argparse.Namespace, extra: list[str]) -> int:
    from mmembed.train import train as run_training

    print_json(run_training(config_of(stage("train"), args)))
    return 0
