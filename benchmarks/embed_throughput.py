"""Embed job benchmark: throughput against a plain PyTorch loop, then durability and memory, few vs many shards.

Two sections, both run by default (``--sections throughput durability`` picks).

**throughput**: the Beam embed job vs a plain PyTorch DataLoader loop on the same shards and model.
Both sides do the same work per run and are timed end to end (what a user waits for):

* beam:  ``mmembed.embed.job.run_job(EmbedJobConfig(..., overwrite=True))`` into a fresh output dir.
  Without ``--beam-args`` this is Beam's in-process FnApiRunner (the job's default local runner).
* plain: ``webdataset.WebDataset(urls)`` -> PIL decode -> open_clip's own eval transform + tokenizer and
  ``imagehash.phash`` in ``torch.utils.data.DataLoader`` workers -> ``model.encode_image`` /
  ``encode_text`` -> L2-normalise -> one Parquet file per shard (pyarrow), into a fresh output dir.
  The perceptual hash is a column the job writes (dedup reads it) and costs about as much per sample
  as the image tower of the tiny model, so the plain loop computes it too.

Each timed run of either side includes: building/loading the model, starting the pipeline or the
DataLoader workers, reading the tars, decoding JPEGs, resize/crop/normalise, tokenizing, the perceptual
hash, both towers, L2-normalising and writing Parquet. Excluded from both: Python imports, shard
creation, output-dir setup. A warm-up run of each side (reported, not in the medians) absorbs one-time
process costs (lazy imports inside Beam/torch, the page cache). Beam and plain runs are interleaved,
alternating which goes first, and the medians over ``--repeats`` runs are compared.

Run it from the repository root (no network needed; the default model is the bundled random-init
``mmembed-tiny``, and the shards are made from photos that scikit-image ships)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_throughput.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_throughput.py --samples 500 --repeats 5 --json
    .venv/bin/python benchmarks/embed_throughput.py --shards 'data/shards/*.tar' \\
        --model ViT-B-32 --pretrained laion2b_s34b_b79k --device cuda
    .venv/bin/python benchmarks/embed_throughput.py \\
        --beam-args '--direct_num_workers 2 --direct_running_mode multi_processing'

``--beam-args`` is passed to ``run_job`` as Beam pipeline options. Without ``--runner`` in it, the job
uses the in-process FnApiRunner, which itself honours ``--direct_num_workers`` and
``--direct_running_mode`` (multi_threading / multi_processing), so no explicit runner is needed for those.

**durability**: the job writes each shard's outputs as soon as that shard is embedded (embeddings, then
errors, each atomically; the errors file marks a complete shard), so the first shard should be durable
after about one shard's work whatever the input size, and memory should not grow with the number of
shards. The section runs ``python -m pipelines.embed`` (the job as a user starts it) in a fresh process on
the first 8, then the first 80 (``--durability-shards``) of one set of generated shards of 50 samples each
(``--durability-samples-per-shard``), so only the shard count varies. It polls ``<out>/errors/`` for
final-named ``*.parquet`` files (temporaries are hidden ``.<name>.tmp-<hex>`` files): the first one is
the first durable shard; when there is one per shard it reads the job's peak RSS so far (``VmHWM`` in
``/proc``: the memory of reading, embedding and writing). A small launcher process starts the job and
reaps it with ``os.wait4`` for its ``ru_maxrss`` too (started from this process, the job would be charged
this process's own peak), the peak of the whole process, which adds the summary and about a second of
interpreter teardown whose spike of tens of MB says little about the job. The model is mmembed-tiny's towers with 512-d
embeddings (a ``local-dir:`` config written into the work dir, random init with ``--seed``), so each
sample's output is realistically sized while the towers stay fast on CPU. The runs of each shard count
alternate (``--durability-repeats``, default 3) and the table shows medians: total seconds, seconds to the
first durable shard, that as a fraction of the total, both peak RSS figures, and their differences most vs
fewest shards. ``--job-root`` starts the job from another source tree (e.g. a git worktree of an older commit,
to compare), put first on ``PYTHONPATH``; the report names the ``pipelines/embed.py`` it ran::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_throughput.py --sections durability
    git worktree add /tmp/mmembed-old OLD_COMMIT
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_throughput.py --sections durability --job-root /tmp/mmembed-old
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import imagehash
import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image, ImageOps

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `benchmarks` and `tests` import when this runs as a script

from benchmarks.harness import (  # noqa: E402
    MIB,
    child_env,
    fmt,
    machine,
    measure,
    median,
    peak_rss_bytes,
    print_table,
    verdict,
)
from mmembed.config import (  # noqa: E402
    DEVICES,
    PRECISIONS,
    DecodeConfig,
    EmbedJobConfig,
    EncoderConfig,
    default_cpu_inference_threads,
)
from mmembed.decode import to_rgb  # noqa: E402
from mmembed.embed.job import run_job  # noqa: E402
from mmembed.encoders.openclip import (  # noqa: E402
    BUNDLED_CONFIG_DIR,
    LOCAL_DIR_PREFIX,
    OpenClipEncoder,
    autocast_dtype,
    register_bundled_configs,
    resolve_device,
)
from mmembed.makeshards import ShardSpec, SourceSample, write_shards  # noqa: E402
from mmembed.shards import list_shards, shard_name  # noqa: E402
from tests.photos import PHOTOS, load_photo  # noqa: E402

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TARGET_RATIO = 0.9  # the Beam job should reach at least 90% of the plain loop's throughput on CPU
SECTIONS = ("throughput", "durability")
BENCH_MODEL = "mmembed-tiny"  # bundled; random weights unless --pretrained or --checkpoint
DURABILITY_EMBED_DIM = 512  # a realistic embedding width (ViT-B-32's), on mmembed-tiny's fast towers
POLL_SECONDS = 0.05  # how often the durability runs look for the first complete shard
# Starts the job (argv[1:]) from a small process and prints its pid, then its ru_maxrss (KB). Linux charges the
# spawning process's peak RSS to a child's ru_maxrss (a vfork'd or forked child's exec records the old address
# space's peak), so a job spawned straight from this process (torch, Beam, the throughput runs) would report ours.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.dup2(2, 1)
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
print(pid, flush=True)
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def default_num_workers() -> int:
    """One DataLoader worker per core.

    The main process only runs the model, which for small models is cheap next to JPEG decode + resize,
    so leaving it a core of its own starves decoding (measured on 2 cores with mmembed-tiny: 1 worker
    ~180 samples/s, 2 workers ~235); with a big model the workers just wait on a full prefetch queue.
    """
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class BenchConfig:
    model: str = BENCH_MODEL
    pretrained: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    samples: int = 2000
    samples_per_shard: int = 250
    shards: tuple[str, ...] = ()  # existing shards; empty: make them from scikit-image photos
    repeats: int = 3
    warmup: int = 1
    num_workers: int = field(default_factory=default_num_workers)
    torch_threads: int | None = None  # None: the embed job's CPU default, for both sides
    beam_args: tuple[str, ...] = ()
    seed: int = 0
    workdir: str | None = None
    json: bool = False
    sections: tuple[str, ...] = SECTIONS
    durability_shards: tuple[int, ...] = (8, 80)
    durability_samples_per_shard: int = 50
    durability_repeats: int = 3
    job_root: str = str(REPO_ROOT)  # the source tree whose ``pipelines.embed`` the durability runs start

    def encoder(self) -> EncoderConfig:
        return EncoderConfig(
            model=self.model,
            pretrained=self.pretrained,
            checkpoint=self.checkpoint,
            device=self.device,
            precision=self.precision,
            batch_size=self.batch_size,
            seed=self.seed,
            random_init=not (self.pretrained or self.checkpoint or self.model.startswith(LOCAL_DIR_PREFIX)),
        )


@dataclass
class RunResult:
    side: str  # "beam" or "plain"
    run: str  # "warmup-1", "1", "2", ...
    samples: int
    seconds: float  # wall clock
    cpu_seconds: float  # user + system of this process and its exited children (DataLoader workers)
    out: str

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds

    @property
    def cpu_ms_per_sample(self) -> float:
        return 1000 * self.cpu_seconds / self.samples


def timed_run(side: str, run: str, out: Path, work: Callable[[], int]) -> RunResult:
    """Run ``work`` (returns the samples it embedded) and time it, wall clock and CPU (with exited children)."""
    with measure() as m:
        samples = work()
    return RunResult(side, run, samples, m.wall_s, m.cpu_s, str(out))


# --------------------------------------------------------------------------------------------------
# Shards


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def photo_variant(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A deterministic random crop (60-100% per side), resize (long side 256-768 px) and maybe a mirror."""
    width, height = photo.size
    crop_w = int(width * rng.uniform(0.6, 1.0))
    crop_h = int(height * rng.uniform(0.6, 1.0))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = photo.crop((left, top, left + crop_w, top + crop_h))
    scale = int(rng.integers(256, 769)) / max(crop_w, crop_h)
    image = image.resize((max(1, round(crop_w * scale)), max(1, round(crop_h * scale))), Image.Resampling.BICUBIC)
    return ImageOps.mirror(image) if rng.random() < 0.5 else image


def make_demo_shards(folder: Path, samples: int, samples_per_shard: int, seed: int) -> list[str]:
    """Write ``samples`` JPEG variants of scikit-image's photos, with captions, into WebDataset shards."""
    rng = np.random.default_rng(seed)
    photos = {name: load_photo(name) for name in PHOTOS}
    photos = {name: photo if photo.mode == "L" else to_rgb(photo) for name, photo in photos.items()}
    names = list(photos)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    sources = []
    for i in range(samples):
        name = names[i % len(names)]
        path = images / f"{i:07d}.jpg"
        quality = int(rng.integers(75, 96))
        photo_variant(photos[name], rng).save(path, format="JPEG", quality=quality)
        sources.append(SourceSample(path, PHOTOS[name], {"source": f"skimage.data.{name}", "variant": i}))
    written = write_shards(iter(sources), ShardSpec(out=str(folder / "shards"), samples_per_shard=samples_per_shard))
    return written["shards"]


def count_samples(urls: list[str]) -> int:
    """Samples in the shards (distinct keys with an image member), read with webdataset."""
    dataset = wds.WebDataset(urls, shardshuffle=False, workersplitter=None, empty_check=False)
    return sum(1 for sample in dataset if any(ext in sample for ext in IMAGE_EXTENSIONS))


# --------------------------------------------------------------------------------------------------
# Beam side


def run_beam(config: BenchConfig, urls: list[str], out: Path, run: str) -> RunResult:
    """The project's embed job, end to end, into a fresh output dir."""
    job = EmbedJobConfig(shards=tuple(urls), out=str(out), encoder=config.encoder(), overwrite=True)

    def work() -> int:
        summary = run_job(job, list(config.beam_args))
        if summary["errors"]:
            print(f"warning: beam run {run}: {summary['errors']} sample errors {summary['errors_by_reason']}")
        return summary["embedded"]

    return timed_run("beam", run, out, work)


# --------------------------------------------------------------------------------------------------
# Plain PyTorch side


@dataclass
class PlainSampleTransform:
    """One WebDataset sample (raw member bytes) -> model inputs and the output row's fields (in a worker)."""

    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]

    def __call__(self, sample: dict[str, Any]) -> tuple:
        image_bytes = next(sample[ext] for ext in IMAGE_EXTENSIONS if ext in sample)
        image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
        caption = sample["txt"].decode("utf-8").strip()
        metadata = json.dumps(json.loads(sample["json"]), ensure_ascii=False) if "json" in sample else None
        return (
            self.preprocess(image),
            self.tokenizer([caption])[0],
            sample["__key__"],
            shard_name(sample["__url__"]),
            caption,
            metadata,
            image.width,
            image.height,
            hashlib.sha256(image_bytes).hexdigest(),
            np.packbits(imagehash.phash(image).hash.ravel()).tobytes(),  # 8 bytes, as the job stores it
        )


def has_image_and_caption(sample: dict[str, Any]) -> bool:
    """Samples the Beam job would embed (it records the others as errors instead)."""
    return "txt" in sample and any(ext in sample for ext in IMAGE_EXTENSIONS)


def plain_loader(
    urls: list[str], transform: PlainSampleTransform, batch_size: int, num_workers: int, pin_memory: bool
) -> torch.utils.data.DataLoader:
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).select(has_image_and_caption).map(transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, shuffle=False
    )


def embed_batches(
    model: torch.nn.Module, loader: torch.utils.data.DataLoader, device: str, dtype: torch.dtype | None
) -> Iterator[tuple[tuple, np.ndarray, np.ndarray, np.ndarray]]:
    """(row fields, image embeddings, text embeddings, cosine) per batch, L2-normalised in float32."""
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    autocast = torch.autocast(device_type, dtype=dtype) if dtype is not None else nullcontext()
    with torch.inference_mode(), autocast:
        for pixels, tokens, *fields in loader:
            image = model.encode_image(pixels.to(device, non_blocking=True))
            text = model.encode_text(tokens.to(device, non_blocking=True))
            image = torch.nn.functional.normalize(image.float(), dim=-1)
            text = torch.nn.functional.normalize(text.float(), dim=-1)
            similarity = (image * text).sum(dim=-1)
            fields = tuple(f.tolist() if isinstance(f, torch.Tensor) else f for f in fields)  # collated ints
            yield fields, image.cpu().numpy(), text.cpu().numpy(), similarity.cpu().numpy()


def write_plain_shard(path: Path, rows: list[tuple], image: np.ndarray, text: np.ndarray, sim: np.ndarray) -> None:
    """One shard's rows, sorted by key, as Parquet with fixed-size-list embeddings."""
    order = sorted(range(len(rows)), key=lambda i: rows[i][0])
    rows = [rows[i] for i in order]
    names = ("key", "shard", "caption", "metadata", "width", "height", "sha256", "phash")
    columns: dict[str, Any] = {name: [row[j] for row in rows] for j, name in enumerate(names)}
    dim = image.shape[1]
    for name, values in (("image_embedding", image[order]), ("text_embedding", text[order])):
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=pa.float32()), dim)
    columns["similarity"] = pa.array(sim[order], type=pa.float32())
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def run_plain(config: BenchConfig, urls: list[str], out: Path, run: str) -> RunResult:
    """open_clip model + transforms, a WebDataset DataLoader, both towers, one Parquet file per shard."""
    device = resolve_device(config.device)
    return timed_run("plain", run, out, lambda: embed_plain(config, urls, out, device))


def embed_plain(config: BenchConfig, urls: list[str], out: Path, device: str) -> int:
    register_bundled_configs()
    torch.manual_seed(config.seed)  # same random init as OpenClipEncoder.load for weightless models
    model, _, preprocess = open_clip.create_model_and_transforms(
        config.model, pretrained=config.pretrained or config.checkpoint, device=device
    )
    model.eval()
    transform = PlainSampleTransform(preprocess, open_clip.get_tokenizer(config.model))
    loader = plain_loader(urls, transform, config.batch_size, config.num_workers, pin_memory=device == "cuda")
    dtype = autocast_dtype(config.precision, device)
    per_shard: dict[str, list] = defaultdict(list)
    for fields, image, text, sim in embed_batches(model, loader, device, dtype):
        for i, row in enumerate(zip(*fields, strict=True)):
            per_shard[row[1]].append((row, image[i], text[i], sim[i]))
    for shard, items in per_shard.items():
        rows, image, text, sim = zip(*items, strict=True)
        write_plain_shard(
            out / "embeddings" / f"{shard}.parquet", list(rows), np.stack(image), np.stack(text), np.array(sim)
        )
    return sum(len(items) for items in per_shard.values())


# --------------------------------------------------------------------------------------------------
# Checks and report


def compare_outputs(beam_out: str, plain_out: str) -> dict[str, Any]:
    """Row counts, the largest embedding difference and equal perceptual hashes between one beam and one plain run."""

    def load(out: str) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, bytes]]:
        columns = ["shard", "key", "image_embedding", "text_embedding", "phash"]
        rows = pq.read_table(Path(out) / "embeddings", columns=columns).to_pydict()
        return {
            (s, k): (np.asarray(i), np.asarray(t), p) for s, k, i, t, p in zip(*(rows[c] for c in columns), strict=True)
        }

    beam, plain = load(beam_out), load(plain_out)
    common = beam.keys() & plain.keys()
    image_diff = max((float(np.abs(beam[k][0] - plain[k][0]).max()) for k in common), default=float("nan"))
    text_diff = max((float(np.abs(beam[k][1] - plain[k][1]).max()) for k in common), default=float("nan"))
    return {
        "beam_rows": len(beam),
        "plain_rows": len(plain),
        "common_rows": len(common),
        "max_abs_diff_image": image_diff,
        "max_abs_diff_text": text_diff,
        "equal_phash": sum(beam[k][2] == plain[k][2] for k in common),
    }


def time_model_load(config: BenchConfig) -> float:
    """Seconds to build/load the model once (both sides pay this inside every timed run)."""
    with measure() as m:
        OpenClipEncoder.load(config.encoder())
    return m.wall_s


def timed_median(results: list[RunResult], side: str, metric: Callable[[RunResult], float]) -> float:
    """Median of ``metric`` over one side's timed runs (warm-up runs left out)."""
    return median([metric(r) for r in results if r.side == side and not r.run.startswith("warm")])


def summarize(config: BenchConfig, context: dict[str, Any], results: list[RunResult]) -> dict[str, Any]:
    def rate(r: RunResult) -> float:
        return r.samples_per_second

    def cpu(r: RunResult) -> float:
        return r.cpu_ms_per_sample

    beam, plain = timed_median(results, "beam", rate), timed_median(results, "plain", rate)
    by_run: dict[str, dict[str, RunResult]] = defaultdict(dict)
    for r in results:
        by_run[r.run][r.side] = r
    runs = [
        {
            "run": run,
            "beam_samples_per_second": round(sides["beam"].samples_per_second, 2),
            "plain_samples_per_second": round(sides["plain"].samples_per_second, 2),
            "beam_seconds": round(sides["beam"].seconds, 3),
            "plain_seconds": round(sides["plain"].seconds, 3),
            "beam_cpu_ms_per_sample": round(sides["beam"].cpu_ms_per_sample, 3),
            "plain_cpu_ms_per_sample": round(sides["plain"].cpu_ms_per_sample, 3),
            "samples": sides["beam"].samples,
            "ratio": round(sides["beam"].samples_per_second / sides["plain"].samples_per_second, 3),
        }
        for run, sides in by_run.items()
    ]
    timed_ratios = [r["ratio"] for r in runs if not r["run"].startswith("warm")]
    ratio = beam / plain
    return {
        "config": {**asdict(config), **context},
        "runs": runs,
        "median_beam_samples_per_second": round(beam, 2),
        "median_plain_samples_per_second": round(plain, 2),
        "ratio_of_medians": round(ratio, 3),
        "median_of_ratios": round(median(timed_ratios), 3),
        "median_beam_cpu_ms_per_sample": round(timed_median(results, "beam", cpu), 3),
        "median_plain_cpu_ms_per_sample": round(timed_median(results, "plain", cpu), 3),
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
    }


TIMING_NOTE = (
    "every run is end to end and both sides include: model build/load, pipeline / DataLoader-worker startup,\n"
    "  tar reading, JPEG decode, resize+crop+normalise, tokenize, perceptual hash, image+text towers, L2-normalise,\n"
    "  one Parquet file per shard. beam also writes errors/<shard>.parquet, re-reads Parquet footers and writes\n"
    "  summary.json (run_job's own bookkeeping). Excluded from both: imports, shard creation, output-dir setup.\n"
    "  Warm-up runs pay one-time process costs (lazy imports, page cache) and are not in the medians.\n"
    "  cpu ms/sample: user+system CPU of this process and its exited children (DataLoader workers, Beam SDK\n"
    "  subprocesses), i.e. the work each side spends per sample; it still inflates when a VM's host is busy.\n"
    "  samples/s (wall clock) is the figure the target is about."
)


def print_report(summary: dict[str, Any], check: dict[str, Any]) -> None:
    c = summary["config"]
    print("\n=== embed throughput: Beam embed job vs plain PyTorch DataLoader loop (same shards, same model) ===")
    print(
        f"model={c['model']} weights={c['weights']} device={c['resolved_device']} autocast={c['autocast']} "
        f"batch_size={c['batch_size']}"
    )
    print(
        f"samples={c['num_samples']} shards={c['num_shards']} ({c['shards_source']}) "
        f"cpus={os.cpu_count()} torch_threads={c['torch_threads_effective']} "
        f"dataloader_workers={c['num_workers']}"
    )
    print(f"beam runner: {c['beam_runner']}  beam_args={list(c['beam_args'])}")
    print(f"model build/load alone: {c['model_load_seconds']:.2f} s (inside every run of both sides)")
    print(
        f"machine: {os.cpu_count()} cpus, load average (1 min) {c['load_average_start']} at start, "
        f"{c['load_average_end']} at end: other processes take cores from both sides, and most from the plain loop,\n"
        "  whose edge is running decode in parallel with the model; above ~1 the ratio drifts towards 1."
    )
    print(f"timing: {TIMING_NOTE}\n")
    headers = ["run", "beam samples/s", "plain samples/s", "beam/plain", "beam s", "plain s"]
    headers += ["beam cpu ms/sample", "plain cpu ms/sample"]
    rows = [
        [r["run"], fmt(r["beam_samples_per_second"], ".1f"), fmt(r["plain_samples_per_second"], ".1f")]
        + [fmt(r["ratio"], ".3f"), fmt(r["beam_seconds"], ".2f"), fmt(r["plain_seconds"], ".2f")]
        + [fmt(r["beam_cpu_ms_per_sample"], ".2f"), fmt(r["plain_cpu_ms_per_sample"], ".2f")]
        for r in summary["runs"]
    ]
    s = summary
    rows.append(
        ["median", fmt(s["median_beam_samples_per_second"], ".1f"), fmt(s["median_plain_samples_per_second"], ".1f")]
        + [fmt(s["ratio_of_medians"], ".3f"), "", "", fmt(s["median_beam_cpu_ms_per_sample"], ".2f")]
        + [fmt(s["median_plain_cpu_ms_per_sample"], ".2f")]
    )
    print_table(headers, rows, indent="")
    print(f"(beam/plain is the ratio of the medians; median of per-run ratios: {summary['median_of_ratios']:.3f})")
    print(
        f"\ntarget: Beam job within 10% of the plain loop on CPU (beam/plain >= {TARGET_RATIO}): "
        f"{verdict(summary['target_met'])}"
    )
    if c["resolved_device"] != "cpu":
        print("  (the target is stated for CPU; this run used " + c["resolved_device"] + ")")
    print(
        f"outputs agree: beam {check['beam_rows']} rows, plain {check['plain_rows']} rows, {check['common_rows']} "
        f"in common; max |beam - plain| image {check['max_abs_diff_image']:.2e}, text {check['max_abs_diff_text']:.2e}"
        f"; equal phash {check['equal_phash']}"
    )


# --------------------------------------------------------------------------------------------------
# Durability: time to the first complete shard and peak memory of the job, few vs many shards


@dataclass
class DurabilityRun:
    """One embed job process: how soon its first shard was complete, how long it ran, how much memory it held."""

    shards: int
    samples: int  # embedded, from the job's summary.json
    seconds: float  # launch to exit
    first_durable_seconds: float | None  # launch to the first errors/<shard>.parquet; None: none appeared
    peak_rss_mb: float  # the job process's ru_maxrss: its whole life, interpreter teardown included
    durable_rss_mb: float | None  # its peak RSS (VmHWM) once every shard was durable; None: no /proc or not seen

    @property
    def first_fraction(self) -> float | None:
        return None if self.first_durable_seconds is None else self.first_durable_seconds / self.seconds


def write_wide_tiny_model(folder: Path) -> str:
    """A ``local-dir:`` model with mmembed-tiny's towers and 512-d embeddings (no weights: seeded random init)."""
    model_cfg = json.loads((BUNDLED_CONFIG_DIR / f"{BENCH_MODEL}.json").read_text(encoding="utf-8"))
    model_cfg["embed_dim"] = DURABILITY_EMBED_DIM
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}), encoding="utf-8")
    return f"{LOCAL_DIR_PREFIX}{folder}"


def job_env(job_root: str) -> dict[str, str]:
    """The benchmarks' child environment with ``job_root`` first on the path, so its ``mmembed`` and ``pipelines``
    load."""
    return child_env(job_root)


def job_code_path(job_root: str) -> str:
    """Where the job processes import ``pipelines.embed`` from, so a report names the code it measured."""
    probe = "import pipelines, os; print(os.path.join(os.path.dirname(pipelines.__file__), 'embed.py'))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=job_root, env=job_env(job_root), capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def job_args(config: BenchConfig, urls: list[str], out: Path, model: str) -> list[str]:
    """Python's arguments for ``python -m pipelines.embed`` on ``urls`` into ``out`` (the job as a user runs it)."""
    return [
        *("-m", "pipelines.embed", "--shards", *urls, "--out", str(out), "--model", model),
        *("--device", resolve_device(config.device), "--batch-size", str(config.batch_size)),
        *("--seed", str(config.seed)),
        *config.beam_args,
    ]


def complete_shards(errors_dir: Path) -> int:
    """Shards whose errors file has its final name (written last, atomically, so the shard is done)."""
    try:
        return sum(e.name.endswith(".parquet") and not e.name.startswith(".") for e in os.scandir(errors_dir))
    except FileNotFoundError:
        return 0


def start_job(config: BenchConfig, args: list[str], log: BinaryIO) -> tuple[subprocess.Popen, int]:
    """The launcher, started with the job's arguments (output to ``log``), and the job's pid it reports."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *args],
        cwd=config.job_root,
        env=job_env(config.job_root),
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    return launcher, int(launcher.stdout.readline())


def run_job_process(config: BenchConfig, urls: list[str], out: Path, model: str) -> DurabilityRun:
    """The embed job in a fresh process: seconds to its first complete shard and to exit, and its peak RSS
    both once every shard is durable and over its whole life (the interpreter's teardown adds a noisy spike)."""
    log = out.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    first = durable_rss = None
    with log.open("wb") as sink:
        started = time.perf_counter()
        launcher, job_pid = start_job(config, job_args(config, urls, out, model), sink)
        while True:
            exited = launcher.poll() is not None
            now, done = time.perf_counter(), complete_shards(out / "errors")
            if first is None and done:
                first = now - started
            if exited:
                break
            if durable_rss is None and done == len(urls):
                durable_rss = peak_rss_bytes(job_pid)  # the live job's VmHWM so far
                durable_rss = None if durable_rss is None else durable_rss / MIB
            time.sleep(POLL_SECONDS)
        peak_kb = int(launcher.stdout.read())  # ru_maxrss is in KB on Linux
    if launcher.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"embed job on {len(urls)} shards exited {launcher.returncode}; log {log}:\n{tail}")
    embedded = json.loads((out / "summary.json").read_text(encoding="utf-8"))["embedded"]
    return DurabilityRun(len(urls), embedded, now - started, first, peak_kb / 1024, durable_rss)


def round_or_none(value: float | None, decimals: int) -> float | None:
    """``value`` rounded for the JSON summary, or None for a figure a run could not measure."""
    return None if value is None else round(value, decimals)


def difference_or_none(most: float | None, fewest: float | None) -> float | None:
    """``most - fewest`` rounded to 0.1 MB, or None when either is missing."""
    return None if most is None or fewest is None else round(most - fewest, 1)


def summarize_durability(runs: list[DurabilityRun]) -> list[dict[str, Any]]:
    """Per shard count, fewest first: the medians of its runs' samples, seconds, first durable shard, peak RSS."""
    rows = []
    for shards in sorted({r.shards for r in runs}):
        mine = [r for r in runs if r.shards == shards]
        rows.append(
            {
                "shards": shards,
                "samples": statistics.median_low(r.samples for r in mine),
                "seconds": round(median([r.seconds for r in mine]), 2),
                "first_durable_seconds": round_or_none(median([r.first_durable_seconds for r in mine]), 2),
                "first_fraction": round_or_none(median([r.first_fraction for r in mine]), 3),
                "durable_rss_mb": round_or_none(median([r.durable_rss_mb for r in mine]), 1),
                "peak_rss_mb": round(median([r.peak_rss_mb for r in mine]), 1),
                "runs": len(mine),
            }
        )
    return rows


def durability_benchmark(config: BenchConfig, workdir: Path) -> dict[str, Any]:
    """Each shard count's job on the first N of one set of generated shards, so only the shard count varies."""
    most, per_shard = max(config.durability_shards), config.durability_samples_per_shard
    print(f"making {most * per_shard} samples ({most} shards of {per_shard}) in {workdir} ...", flush=True)
    urls = make_demo_shards(workdir, most * per_shard, per_shard, config.seed)
    model = write_wide_tiny_model(workdir / "model")
    context = {"job_code": job_code_path(config.job_root), "load_average_start": machine()["load_1m"]}
    runs: list[DurabilityRun] = []
    for repeat in range(config.durability_repeats):
        counts = config.durability_shards if repeat % 2 == 0 else config.durability_shards[::-1]  # alternate order
        for count in counts:
            run = run_job_process(config, urls[:count], workdir / "out" / f"{count}-shards-{repeat + 1}", model)
            print(
                f"  run {repeat + 1} {count:>4} shards: {run.samples} samples in {run.seconds:6.2f} s, first durable "
                f"shard at {fmt(run.first_durable_seconds, '.2f'):>6} s, "
                f"peak RSS until all durable {fmt(run.durable_rss_mb, '.1f'):>7} MB, whole process "
                f"{run.peak_rss_mb:7.1f} MB",
                flush=True,
            )
            runs.append(run)
    context["load_average_end"] = machine()["load_1m"]
    rows = summarize_durability(runs)
    return {
        **context,
        "model": model,
        "embed_dim": DURABILITY_EMBED_DIM,
        "device": resolve_device(config.device),
        "samples_per_shard": per_shard,
        "rows": rows,
        "peak_rss_difference_mb": round(rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"], 1),  # most vs fewest
        "durable_rss_difference_mb": difference_or_none(rows[-1]["durable_rss_mb"], rows[0]["durable_rss_mb"]),
        "runs": [{**asdict(r), "first_fraction": r.first_fraction} for r in runs],
    }


def print_durability_report(summary: dict[str, Any], config: BenchConfig) -> None:
    """The durability table: per shard count, total and first-durable-shard seconds, their fraction, peak RSS."""
    rows = summary["rows"]
    counts = " vs ".join(str(r["shards"]) for r in rows)
    print(f"\n=== durability: time to the first complete shard and peak memory of the embed job, {counts} shards ===")
    print(
        f"job: python -m pipelines.embed from {summary['job_code']}, each run a fresh process (RSS is the job's alone)"
    )
    print(
        f"model: mmembed-tiny towers with embed_dim {summary['embed_dim']}, random init (seed {config.seed}); "
        f"device={summary['device']} batch_size={config.batch_size}; {summary['samples_per_shard']} samples per shard "
        f"(the first N of the same shards); medians of {config.durability_repeats} run(s) per shard count"
    )
    print(
        f"machine: {os.cpu_count()} cpus, load average (1 min) {summary['load_average_start']} at start, "
        f"{summary['load_average_end']} at end"
    )
    print(
        "first durable: seconds from launch until a shard's errors/<shard>.parquet has its final name (written after"
        "\n  its embeddings file, so the shard is complete); fraction = first durable / total.\n"
        "  peak RSS MB, all durable: the job's peak RSS (VmHWM) when every shard was durable, i.e. while it read,\n"
        "  embedded and wrote; whole process: its ru_maxrss, which adds the summary and the interpreter's teardown\n"
        "  (a spike of tens of MB in its last second, after the job's work is done)."
    )
    print()
    headers = ["shards", "samples", "total s", "first durable s", "fraction", "peak RSS MB, all durable"]
    table = [
        [r["shards"], r["samples"], f"{r['seconds']:.2f}", fmt(r["first_durable_seconds"], ".2f")]
        + [fmt(r["first_fraction"], ".3f"), fmt(r["durable_rss_mb"], ".1f"), f"{r['peak_rss_mb']:.1f}"]
        for r in rows
    ]
    print_table([*headers, "whole process"], table, indent="")
    if len(rows) > 1:
        fewest, most = rows[0], rows[-1]
        durable = summary["durable_rss_difference_mb"]
        print(
            f"peak RSS, {most['shards']} vs {fewest['shards']} shards ({most['samples'] - fewest['samples']} more "
            f"samples): all durable {fmt(durable, '+.1f')} MB, "
            f"whole process {summary['peak_rss_difference_mb']:+.1f} MB"
        )


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=BENCH_MODEL, help="open_clip model name (default: bundled mmembed-tiny)")
    parser.add_argument("--pretrained", help="open_clip pretrained tag (needs the weights cached or a download)")
    parser.add_argument("--checkpoint", help="local open_clip checkpoint file for --model")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="autocast dtype (auto: bf16/fp16 on GPU)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2000, help="samples to generate (ignored with --shards)")
    parser.add_argument("--samples-per-shard", type=int, default=250)
    parser.add_argument("--shards", nargs="+", default=[], help="existing shards (paths, globs, {a..b}) to use")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; medians are reported")
    parser.add_argument("--warmup", type=int, default=1, help="untimed-in-median warm-up runs per side")
    parser.add_argument(
        "--num-workers", type=int, default=default_num_workers(), help="DataLoader workers (plain side)"
    )
    parser.add_argument("--torch-threads", type=int, help="torch.set_num_threads for this process (both sides)")
    parser.add_argument("--beam-args", default="", help="Beam pipeline options for the job, one quoted string")
    parser.add_argument("--seed", type=int, default=0, help="seeds shard generation and random-init weights")
    parser.add_argument("--workdir", help="keep shards and outputs here (default: a temp dir, removed at the end)")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON object")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to run")
    parser.add_argument(
        "--durability-shards", nargs="+", type=int, default=[8, 80], help="shard counts the durability runs compare"
    )
    parser.add_argument("--durability-samples-per-shard", type=int, default=50)
    parser.add_argument("--durability-repeats", type=int, default=3, help="job runs per shard count; medians")
    parser.add_argument(
        "--job-root",
        default=str(REPO_ROOT),
        help="source tree whose pipelines.embed the durability runs start (default: this checkout)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.samples < 1 or args.num_workers < 0:
        parser.error("--repeats and --samples must be >= 1, --warmup and --num-workers >= 0")
    if min(args.durability_shards) < 1 or args.durability_samples_per_shard < 1 or args.durability_repeats < 1:
        parser.error("--durability-shards, --durability-samples-per-shard and --durability-repeats must be >= 1")
    return BenchConfig(
        model=args.model,
        pretrained=args.pretrained,
        checkpoint=args.checkpoint,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch_size,
        samples=args.samples,
        samples_per_shard=args.samples_per_shard,
        shards=tuple(args.shards),
        repeats=args.repeats,
        warmup=args.warmup,
        num_workers=args.num_workers,
        torch_threads=args.torch_threads,
        beam_args=tuple(shlex.split(args.beam_args)),
        seed=args.seed,
        workdir=args.workdir,
        json=args.json,
        sections=tuple(args.sections),
        durability_shards=tuple(args.durability_shards),
        durability_samples_per_shard=args.durability_samples_per_shard,
        durability_repeats=args.durability_repeats,
        job_root=str(Path(args.job_root).resolve()),
    )


def beam_runner_description(beam_args: tuple[str, ...]) -> str:
    runner = next((a for a in beam_args if a.startswith("--runner")), None)
    if runner:
        return f"explicit ({runner})"
    mode = "multi-worker per --beam-args" if any("direct_" in a for a in beam_args) else "in-process, 1 worker"
    return f"FnApiRunner ({mode})"


def benchmark(config: BenchConfig, workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    seed_everything(config.seed)
    # One torch thread count for the whole process, so both sides run the model with the same threads:
    # --torch-threads, else the embed job's own CPU default (the cores its decode threads leave).
    torch.set_num_threads(config.torch_threads or default_cpu_inference_threads(DecodeConfig().threads))
    device = resolve_device(config.device)  # --device cuda without CUDA fails here, clearly
    if config.shards:
        urls, source = list_shards(config.shards), "given"
    else:
        print(f"making {config.samples} samples from scikit-image photos in {workdir} ...", flush=True)
        urls, source = make_demo_shards(workdir, config.samples, config.samples_per_shard, config.seed), "generated"
    num_samples = count_samples(urls)
    context = {
        "resolved_device": device,
        "autocast": str(autocast_dtype(config.precision, device) or "none (fp32)"),
        "weights": config.pretrained or config.checkpoint or f"random init (seed {config.seed})",
        "num_samples": num_samples,
        "num_shards": len(urls),
        "shards_source": source,
        "torch_threads_effective": torch.get_num_threads(),
        "beam_runner": beam_runner_description(config.beam_args),
        "model_load_seconds": round(time_model_load(config), 3),
        "load_average_start": machine()["load_1m"],
    }
    runners = {"beam": run_beam, "plain": run_plain}
    labels = [f"warmup-{i + 1}" for i in range(config.warmup)] + [str(i + 1) for i in range(config.repeats)]
    results: list[RunResult] = []
    for index, label in enumerate(labels):
        order = ("beam", "plain") if index % 2 == 0 else ("plain", "beam")  # alternate who goes first
        for side in order:
            result = runners[side](config, urls, workdir / "out" / f"{side}-{label}", label)
            print(
                f"  run {label:>9} {side:>5}: {result.samples} samples in {result.seconds:6.2f} s "
                f"= {result.samples_per_second:7.1f} samples/s, {result.cpu_ms_per_sample:.2f} cpu ms/sample",
                flush=True,
            )
            results.append(result)
    context["load_average_end"] = machine()["load_1m"]
    last = {r.side: r for r in results}
    check = compare_outputs(last["beam"].out, last["plain"].out)
    return summarize(config, context, results), check


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        resolve_device(config.device)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mmembed-bench-") as tmp:
        workdir = Path(config.workdir or tmp)
        if "throughput" in config.sections:
            summary, check = benchmark(config, workdir)
            print_report(summary, check)
            result.update(summary, output_check=check)
        if "durability" in config.sections:
            durability = durability_benchmark(config, workdir / "durability")
            print_durability_report(durability, config)
            result["durability"] = durability
    if config.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
