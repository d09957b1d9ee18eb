"""The training loop: open_clip's model, contrastive loss and cosine schedule over shard batches.

One process, one device. Per step: forward both towers, open_clip's ``ClipLoss`` (``SigLipLoss``
for SigLIP models), backward, gradient clipping, AdamW step, then the logit scale is clamped to
ln(100) as open_clip's trainer does. Progress goes to the log and ``metrics.jsonl``; checkpoints,
the loss plot and the errors file are written at every checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from dataclasses import asdict, replace
from typing import Any

import open_clip
import pyarrow.parquet as pq
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from open_clip_train.scheduler import cosine_lr

from mmembed import storage
from mmembed.config import ConfigError
from mmembed.encoders.openclip import (
    CaptionTokenizer,
    autocast_dtype,
    create_model,
    ensure_weights,
    file_sha256,
    provenance,
    resolve_device,
    resolve_preprocess_cfg,
)
from mmembed.progress import Progress
from mmembed.records import SampleError
from mmembed.schema import errors_table
from mmembed.shards import list_shards
from mmembed.train.checkpoint import (
    RunState,
    load_checkpoint,
    model_checkpoint,
    run_state,
    save_atomic,
    training_checkpoint,
)
from mmembed.train.config import TrainConfig
from mmembed.train.data import TrainBatches, count_samples
from mmembed.train.plot import plot_loss, read_metrics
from mmembed.train.run_files import RunFiles

log = logging.getLogger(__name__)

MAX_LOGIT_SCALE = math.log(100)


def make_loss(model: torch.nn.Module) -> torch.nn.Module:
    """open_clip's loss for the model's kind: sigmoid loss when it has a logit bias, else CLIP's softmax loss."""
    if isinstance(model, open_clip.CoCa):
        raise ConfigError("CoCa models need a captioning loss as well; train them with open_clip's own trainer")
    if getattr(model, "logit_bias", None) is not None:
        return open_clip.SigLipLoss()
    return open_clip.ClipLoss()


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with open_clip's split: no weight decay on gains, biases, embeddings' scale and logit scale."""

    def exclude(name: str, param: torch.nn.Parameter) -> bool:
        return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": config.weight_decay},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def run_meta(config: TrainConfig, urls: list[str], samples_per_epoch: int, total_steps: int) -> dict[str, Any]:
    """What a checkpoint records about the run: the model, its starting weights and the settings."""
    init = provenance(config.init)
    settings = {k: v for k, v in asdict(config).items() if k not in ("init", "decode", "resume", "overwrite", "out")}
    settings["shards"] = urls
    return {
        "model": config.init.model,
        "init_weights": init["weights"],
        "init_checkpoint": config.init.checkpoint,
        "init_seed": config.init.seed,
        "preprocessing": init["preprocessing"],
        "train": {**settings, "caption_key": config.decode.caption_key},
        "samples_per_epoch": samples_per_epoch,
        "total_steps": total_steps,
    }


def check_resumable(saved: dict[str, Any], meta: dict[str, Any], path: str) -> None:
    """A resume must continue the same run: same model, start, data and schedule."""
    diffs = [
        f"{key}: checkpoint {saved.get(key)!r} vs now {meta[key]!r}"
        for key in ("model", "init_weights", "train", "total_steps")
        if saved.get(key) != meta[key]
    ]
    if diffs:
        raise ConfigError(
            f"{path} belongs to a run with other settings ({'; '.join(diffs)}); fix: resume with the same "
            "options, or start a new run with --overwrite or another --out"
        )


class Trainer:
    """One training run in ``config.out``: set up, optionally resume, train, write the model."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.files = RunFiles(config.out)
        self.device = resolve_device(config.init.device)
        ensure_weights(config.init)  # before the run folder is made: a missing download stops here
        if self.device == "cpu" and config.init.torch_threads:
            torch.set_num_threads(config.init.torch_threads)
        self.files.prepare(resume=config.resume, overwrite=config.overwrite)
        self.urls = list_shards(config.shards)
        samples = count_samples(self.urls, config.decode.image_extensions)
        steps_per_epoch = samples // config.batch_size
        if steps_per_epoch == 0:
            raise ConfigError(
                f"the shards hold {samples} samples, fewer than one batch of {config.batch_size}; "
                "fix: pass a smaller --batch-size or more shards"
            )
        self.total_steps = min(config.max_steps or math.inf, config.epochs * steps_per_epoch)
        self.meta = run_meta(config, self.urls, samples, self.total_steps)

        self.model = create_model(config.init, self.device)
        self.model.output_dict = True
        self.loss = make_loss(self.model)
        self.optimizer = make_optimizer(self.model, config)
        self.schedule = cosine_lr(self.optimizer, config.lr, config.warmup_steps, self.total_steps)
        self.autocast = autocast_dtype(config.init.precision, self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.autocast == torch.float16)
        self.errors: list[SampleError] = []
        self.state = RunState()
        self.saved_step = -1  # the step of the last checkpoint written
        if config.resume and storage.exists(self.files.latest):
            self._resume()

        preprocess = PreprocessCfg(**resolve_preprocess_cfg(config.init))
        tokenizer = CaptionTokenizer(config.init)
        self.batches = TrainBatches(
            self.urls,
            replace(config.decode, fingerprints=False),
            image_transform_v2(preprocess, is_train=config.augment),
            lambda captions: torch.from_numpy(tokenizer(captions)),
            config.batch_size,
            config.shuffle_buffer,
            config.init.seed,
        )

    def _resume(self) -> None:
        checkpoint = load_checkpoint(self.files.latest, map_location=self.device)
        saved = checkpoint["mmembed"]
        check_resumable(saved, self.meta, self.files.latest)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.state = run_state(saved)
        self.errors = self.files.read_errors()
        self.files.drop_metrics_after(self.state.step)  # steps after the checkpoint are trained again
        self.saved_step = self.state.step
        log.info("resuming %s at step %d (epoch %d, sample %d)", self.files.latest, *asdict(self.state).values())

    def step(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[float, float]:
        """One optimizer step on one batch; returns (loss, learning rate)."""
        lr = self.schedule(self.state.step)
        images = images.to(self.device, non_blocking=True)
        tokens = tokens.to(self.device, non_blocking=True)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.autocast(device_type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None):
            out = self.model(images, tokens)
            loss = self.loss(**out)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return float(loss.detach()), lr

    def run(self) -> dict[str, Any]:
        config = self.config
        started = time.monotonic()
        first_step = self.state.step
        self.model.train()
        recent: deque[float] = deque(maxlen=config.log_every)
        log.info(
            "training %s on %d shards (%d samples/epoch): %d steps of %d, %d epoch(s), on %s",
            config.init.model,
            len(self.urls),
            self.meta["samples_per_epoch"],
            self.total_steps,
            config.batch_size,
            config.epochs,
            self.device,
        )
        with (
            open(self.files.local_metrics, "a", encoding="utf-8", buffering=1) as metrics,
            Progress("train", self.total_steps, "steps", rate_of="samples", initial=first_step) as progress,
        ):
            for epoch in range(self.state.epoch, config.epochs):
                on_error = self.errors.append if epoch == 0 else None  # the same samples fail every epoch
                for batch in self.batches.epoch(epoch, skip=self.state.position, on_error=on_error):
                    if self.state.step >= self.total_steps:
                        break  # --max-steps reached inside the epoch
                    loss, lr = self.step(batch.images, batch.tokens)
                    self.state = RunState(self.state.step + 1, epoch, batch.position)
                    progress.advance(1, samples=len(batch.images))
                    recent.append(loss)
                    metrics.write(json.dumps(self._metrics_entry(loss, lr, started)) + "\n")
                    if self.state.step % config.log_every == 0 or self.state.step == self.total_steps:
                        self._log_progress(recent, lr)
                    if config.checkpoint_every and self.state.step % config.checkpoint_every == 0:
                        self._checkpoint()
                else:  # the epoch's samples ran out
                    self.state = RunState(self.state.step, epoch + 1, 0)
                    self._checkpoint(epoch_end=True)
                    continue
                break
        if self.saved_step != self.state.step:
            self._checkpoint()
        save_atomic(model_checkpoint(self.model, self.meta, self.state), self.files.model)
        summary = self._summary(started, first_step, recent)
        storage.write_bytes(self.files.summary, json.dumps(summary, indent=2).encode())
        return summary

    def _metrics_entry(self, loss: float, lr: float, started: float) -> dict[str, Any]:
        """One line of metrics.jsonl: the step's loss, learning rate and logit scale."""
        return {
            "step": self.state.step,
            "epoch": self.state.epoch,
            "loss": loss,
            "lr": lr,
            "logit_scale": float(self.model.logit_scale.detach().exp()),
            "seconds": round(time.monotonic() - started, 3),
        }

    def _log_progress(self, recent: deque[float], lr: float) -> None:
        """The loss line of every ``log_every`` steps (rate and ETA: the ``train`` progress line or bar)."""
        log.info(
            "epoch %d step %d/%d loss %.4f (mean of %d) lr %.2e scale %.1f",
            self.state.epoch + 1,
            self.state.step,
            self.total_steps,
            sum(recent) / len(recent),
            len(recent),
            lr,
            float(self.model.logit_scale.detach().exp()),
        )

    def _checkpoint(self, epoch_end: bool = False) -> None:
        """latest.pt (and epoch_<n>.pt at an epoch's end if asked), the errors so far and the loss plot."""
        checkpoint = training_checkpoint(self.model, self.optimizer, self.state, self.meta)
        save_atomic(checkpoint, self.files.latest)
        if epoch_end and self.config.keep_epoch_checkpoints:
            save_atomic(checkpoint, self.files.epoch_checkpoint(self.state.epoch))
        self.saved_step = self.state.step
        storage.write_atomic(self.files.errors, lambda f: pq.write_table(errors_table(self.errors), f))
        self.files.publish_metrics()
        title = f"{self.config.init.model} training loss"
        storage.write_bytes(self.files.loss_plot, plot_loss(read_metrics(self.files.local_metrics), title))

    def _summary(self, started: float, first_step: int, recent: deque[float]) -> dict[str, Any]:
        seconds = time.monotonic() - started
        codes: dict[str, int] = {}
        for error in self.errors:
            codes[error.code] = codes.get(error.code, 0) + 1
        return {
            "model": self.config.init.model,
            "model_file": self.files.model,
            "model_sha256": file_sha256(self.files.model),
            "steps": self.state.step,
            "epochs_completed": self.state.epoch,
            "samples_per_epoch": self.meta["samples_per_epoch"],
            "samples_trained": self.state.step * self.config.batch_size,
            "final_loss": sum(recent) / len(recent) if recent else None,  # mean over the last log interval
            "errors": len(self.errors),
            "errors_by_code": codes,
            "seconds": round(seconds, 2),
            "samples_per_second": round(
                (self.state.step - first_step) * self.config.batch_size / max(seconds, 1e-9), 1
            ),
            "embed_with": f"mmembed embed --model {self.config.init.model} --checkpoint {self.files.model} ...",
        }


def train(config: TrainConfig) -> dict[str, Any]:
    """Train (or fine-tune, or resume) and return the run's summary; the model is ``<out>/model.pt``."""
    return Trainer(config).run()
