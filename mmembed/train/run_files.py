"""The files of one training run under its output folder (local, ``s3://``, ``gs://``), and the rules for
reusing that folder."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass

import pyarrow.parquet as pq

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.records import SampleError


@dataclass(frozen=True)
class RunFiles:
    """``<out>/``: model.pt, summary.json, metrics.jsonl, loss.png, errors.parquet, checkpoints/.

    The metrics log is appended line by line, which object stores cannot do: for a remote ``out`` it is kept
    in a local file (``local_metrics``) and published beside the checkpoints each time they are written.
    """

    out: str

    @property
    def checkpoints(self) -> str:
        return storage.join(self.out, "checkpoints")

    @property
    def latest(self) -> str:
        return storage.join(self.checkpoints, "latest.pt")

    def epoch_checkpoint(self, epoch: int) -> str:
        return storage.join(self.checkpoints, f"epoch_{epoch}.pt")

    @property
    def model(self) -> str:
        return storage.join(self.out, "model.pt")

    @property
    def metrics(self) -> str:
        return storage.join(self.out, "metrics.jsonl")

    @property
    def local_metrics(self) -> str:
        """Where the run appends its metrics: the log itself when ``out`` is local, else a local working copy
        (one per ``out``, so a resumed run on this machine finds it)."""
        if storage.is_local(self.out):
            return storage.local_path(self.metrics)
        digest = hashlib.sha256(self.out.encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), f"mmembed-train-{digest}", "metrics.jsonl")

    @property
    def loss_plot(self) -> str:
        return storage.join(self.out, "loss.png")

    @property
    def errors(self) -> str:
        return storage.join(self.out, "errors.parquet")

    @property
    def summary(self) -> str:
        return storage.join(self.out, "summary.json")

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Make the folder; an earlier run there is continued (resume), replaced (overwrite) or refused."""
        if overwrite:
            checkpoints = storage.glob(storage.join(self.checkpoints, "*"))
            storage.delete([*checkpoints, self.model, self.metrics, self.loss_plot, self.errors, self.summary])
        elif not resume and (storage.exists(self.latest) or storage.exists(self.model)):
            raise ConfigError(
                f"{self.out} already holds a training run; fix: pass --resume to continue it, "
                "--overwrite to start over, or another --out"
            )
        storage.make_dirs(self.checkpoints)
        os.makedirs(os.path.dirname(self.local_metrics), exist_ok=True)
        if not storage.is_local(self.out):  # the working copy starts as the published log (or empty)
            published = storage.read_bytes(self.metrics) if resume and storage.exists(self.metrics) else b""
            with open(self.local_metrics, "wb") as f:
                f.write(published)

    def publish_metrics(self) -> None:
        """Copy the local working metrics log to a remote ``out`` (a no-op when ``out`` is local)."""
        if not storage.is_local(self.out) and os.path.exists(self.local_metrics):
            storage.upload(self.local_metrics, self.metrics)

    def drop_metrics_after(self, step: int) -> None:
        """Keep the metrics lines up to ``step`` (a resume trains the later steps again)."""
        if os.path.isfile(self.local_metrics):
            with open(self.local_metrics, encoding="utf-8") as f:
                lines = f.read().splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
            with open(self.local_metrics, "w", encoding="utf-8") as f:
                f.write("".join(f"{line}\n" for line in kept))
            self.publish_metrics()

    def read_errors(self) -> list[SampleError]:
        """The error records a resumed run had written so far."""
        if not storage.exists(self.errors):
            return []
        with storage.open_read(self.errors) as f:
            return [SampleError(**row) for row in pq.read_table(f).to_pylist()]
