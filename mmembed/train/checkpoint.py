"""Training checkpoints in open_clip's format, plus mmembed's own metadata.

A checkpoint is a dict with ``state_dict`` (what ``open_clip.create_model(pretrained=FILE)`` and
``mmembed embed --checkpoint FILE`` load), ``optimizer``, ``epoch`` and ``name`` as open_clip's
trainer writes them, and ``mmembed``: the model name, its starting weights, the training settings
and where the run stands (step, epoch, position in the epoch's sample stream) for an exact resume.
Files are written to a temporary name and renamed, so a crash never leaves a half-written file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmembed import storage
from mmembed.encoders.openclip import CHECKPOINT_META_KEY as META_KEY

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class RunState:
    """Where a run stands: optimizer steps done, the current epoch and raw samples consumed in it."""

    step: int = 0
    epoch: int = 0
    position: int = 0


def save_atomic(obj: dict[str, Any], path: Path | str) -> None:
    """``torch.save`` to ``path`` through ``storage.write_atomic``: a reader never sees half a checkpoint."""
    storage.write_atomic(str(path), lambda f: torch.save(obj, f))


def training_checkpoint(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: RunState, meta: dict[str, Any]
) -> dict[str, Any]:
    """Everything a resume needs, in the layout open_clip's trainer uses."""
    return {
        "epoch": state.epoch,
        "name": meta["model"],
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        META_KEY: {
            **meta,
            "format": CHECKPOINT_FORMAT,
            "step": state.step,
            "epoch": state.epoch,
            "position": state.position,
        },
    }


def model_checkpoint(model: torch.nn.Module, meta: dict[str, Any], state: RunState) -> dict[str, Any]:
    """Weights and metadata only: the file to embed with (a third of a training checkpoint's size)."""
    return {
        "name": meta["model"],
        "state_dict": model.state_dict(),
        META_KEY: {**meta, "format": CHECKPOINT_FORMAT, "step": state.step, "epoch": state.epoch},
    }


def load_checkpoint(path: Path | str, map_location: str = "cpu") -> dict[str, Any]:
    """A checkpoint written by ``save_atomic`` (tensors and plain values only: ``weights_only`` loading)."""
    with storage.open_read(str(path)) as f:
        return torch.load(f, map_location=map_location, weights_only=True)


def run_state(meta: dict[str, Any]) -> RunState:
    return RunState(step=int(meta["step"]), epoch=int(meta["epoch"]), position=int(meta.get("position", 0)))
