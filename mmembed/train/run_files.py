"""The files of one training run under its output folder, and the rules for reusing that folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from mmembed.config import ConfigError
from mmembed.records import SampleError


@dataclass(frozen=True)
class RunFiles:
    """``<out>/``: model.pt, summary.json, metrics.jsonl, loss.png, errors.parquet, checkpoints/."""

    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    def epoch_checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch}.pt"

    @property
    def model(self) -> Path:
        return self.out / "model.pt"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.out / "loss.png"

    @property
    def errors(self) -> Path:
        return self.out / "errors.parquet"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Make the folder; an earlier run there is continued (resume), replaced (overwrite) or refused."""
        if overwrite and self.out.exists():
            for path in (self.checkpoints, self.model, self.metrics, self.loss_plot, self.errors, self.summary):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        elif not resume and (self.latest.exists() or self.model.exists()):
            raise ConfigError(
                f"{self.out} already holds a training run; fix: pass --resume to continue it, "
                "--overwrite to start over, or another --out"
            )
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def drop_metrics_after(self, step: int) -> None:
        """Keep the metrics lines up to ``step`` (a resume trains the later steps again)."""
        if self.metrics.is_file():
            lines = self.metrics.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
            self.metrics.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def read_errors(self) -> list[SampleError]:
        """The error records a resumed run had written so far."""
        if not self.errors.is_file():
            return []
        return [SampleError(**row) for row in pq.read_table(self.errors).to_pylist()]
