"""The loss curve of a run as a PNG, redrawn from its metrics log at every checkpoint."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON lines of a local metrics log (one per logged step)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def moving_average(values: np.ndarray, width: int) -> np.ndarray:
    """Trailing mean over ``width`` points (shorter at the start), to show the trend under noisy steps."""
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    starts = np.maximum(np.arange(1, len(values) + 1) - width, 0)
    return (cumulative[1:] - cumulative[starts]) / (np.arange(1, len(values) + 1) - starts)


def plot_loss(metrics: list[dict], title: str) -> bytes:
    """Loss per step (raw and smoothed) and the learning rate on a second axis, as PNG bytes."""
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if metrics:
        steps = np.array([m["step"] for m in metrics])
        loss = np.array([m["loss"] for m in metrics], dtype=float)
        ax.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
        ax.plot(steps, moving_average(loss, 20), color="tab:blue", linewidth=2, label="loss (moving average)")
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [m["lr"] for m in metrics], color="tab:orange", linewidth=1, label="learning rate")
        lr_ax.set_ylabel("learning rate", color="tab:orange")
        ax.legend(loc="upper right")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    return png.getvalue()
