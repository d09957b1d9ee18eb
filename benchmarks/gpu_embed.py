"""One prepared GPU run: model-only images/s, then the embed job end to end with CPU and with GPU JPEG decode.

Everything it reads it makes itself (no download, no network): ViT-B-32 with random weights from open_clip's own
config (``--random-init``), and WebDataset shards of ~1,000-px JPEGs made from the photos scikit-image ships
(each photo cropped 70-100 %, resized to a long side of 800-1,200 px, sometimes mirrored or stored turned with an
EXIF orientation, JPEG quality 80-95 with 4:4:4, 4:2:2 or 4:2:0 chroma; a pool of distinct JPEGs written into a
few shards, hard-linked under more names up to ``--samples``, so the disk holds only the distinct shards).

It prints, in order:

1. **model only**: ViT-B-32 image tower at ``--precision`` (bf16), images/s on uint8 pixels already on the
   device (normalise + encode_image), and through ``OpenClipEncoder.embed_pixels`` (host uint8 in, vectors out).
2. **decode stages**, in this process: the device path on one batch (``DeviceImageDecoder``: decode_jpeg, EXIF,
   resize/crop, pHash; then ``embed_jpegs`` with the end-to-end model) and the CPU path (``SamplePreparer``:
   Pillow decode, resize/crop, hashes, tokens) on one thread, images/s: what each side can at most feed.
3. **end to end**: ``python -m pipelines.embed`` (``mmembed.embed.job.run_job`` on Beam's local FnApiRunner,
   ``--direct_num_workers N --direct_running_mode multi_processing``) over the shards, once per decoder and
   worker count (``--workers-cpu``, ``--workers-gpu``; default: all cores for CPU decode, half and all for GPU
   decode). Each run is a fresh process, timed from launch to exit (imports, model loads and Beam start-up
   included) and, steady state, from the first shard to be committed to the last (samples of the shards committed
   after the first, over that time). A sampling thread reads the machine's CPU use (/proc/stat, share of all
   cores busy) and the GPU's utilisation and memory (nvidia-smi) every half second alongside.

Targets on an H100/H200 with 16 cores: >= 5,000 samples/s end to end with CPU decode, >= 10,000 with GPU decode.

    benchmarks/gpu_embed.sh              # the GPU machine: everything, under 8 minutes
    benchmarks/gpu_embed.sh --dry-run    # any machine: the whole script on the CPU, small, under 2 minutes
    .venv/bin/python benchmarks/gpu_embed.py --workers-gpu 4 8 16 --json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

from mmembed.config import DecodeConfig, EncoderConfig  # noqa: E402
from mmembed.encoders.openclip import OpenClipEncoder, autocast_dtype, resolve_device  # noqa: E402
from mmembed.shards import iter_shard_samples  # noqa: E402
from tests.photos import PHOTOS, load_photo  # noqa: E402
from tests.tarmaker import image_bytes, write_tar  # noqa: E402

TARGETS = {"cpu": 5_000, "gpu": 10_000}  # samples/s end to end on an H100/H200 with 16 cores
ORIENTED = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}
SAMPLE_SECONDS = 0.5


def cores() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class BenchConfig:
    """What to run; ``for_dry_run`` shrinks it to a CPU check of the whole script."""

    device: str = "cuda"
    precision: str = "bf16"
    model: str = "ViT-B-32"  # the end-to-end runs' model (random weights)
    batch_size: int = 256
    model_batch: int = 512  # model-only batch
    model_batches: int = 50
    variants_per_photo: int = 24  # distinct JPEGs in the pool: this many per scikit-image photo
    long_side: int = 1000
    samples: int = 64_000
    samples_per_shard: int = 500
    distinct_shards: int = 16
    workers_cpu: tuple[int, ...] = field(default_factory=lambda: (cores(),))
    workers_gpu: tuple[int, ...] = field(default_factory=lambda: tuple(sorted({max(1, cores() // 2), cores()})))
    decode_threads: int | None = None  # per worker; None: the job's default, min(4, cores)
    run_timeout: float = 120.0  # seconds per end-to-end run; a run past it is killed and reported as such
    seed: int = 0
    workdir: str | None = None
    json: bool = False

    @classmethod
    def for_dry_run(cls, **overrides: Any) -> BenchConfig:
        """Every section on the CPU, sized to finish in about a minute on 2 cores."""
        small = {
            "device": "cpu",
            "precision": "fp32",  # bf16 autocast is slow on a CPU; the GPU run's figures are bf16
            "model": "mmembed-tiny",
            "batch_size": 16,
            "model_batch": 8,
            "model_batches": 2,
            "variants_per_photo": 2,
            "samples": 192,
            "samples_per_shard": 24,
            "distinct_shards": 4,
            "workers_cpu": (cores(),),
            "workers_gpu": (cores(),),
            "run_timeout": 90.0,
        }
        return cls(**{**small, **overrides})


# --------------------------------------------------------------------------------------------------
# Data


def web_jpeg(args: tuple[str, int, int, int]) -> bytes:
    """One varied web-size JPEG of a scikit-image photo: (photo, long side, seed, variant) -> bytes."""
    name, long_side, seed, variant = args
    rng = np.random.default_rng([seed, sorted(PHOTOS).index(name), variant])
    image = load_photo(name)
    image = image if image.mode == "L" else image.convert("RGB")
    width, height = image.size
    crop_w, crop_h = int(width * rng.uniform(0.7, 1.0)), int(height * rng.uniform(0.7, 1.0))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    scale = long_side * rng.uniform(0.8, 1.2) / max(crop_w, crop_h)
    image = image.resize((round(crop_w * scale), round(crop_h * scale)), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    exif = Image.Exif()
    if rng.random() < 0.1:  # stored turned, upright again once the EXIF orientation is applied
        orientation = int(rng.choice(list(ORIENTED)))
        image, exif[0x0112] = image.transpose(ORIENTED[orientation]), orientation
    quality, subsampling = int(rng.integers(80, 96)), int(rng.integers(0, 3))
    return image_bytes(image, "JPEG", quality=quality, subsampling=subsampling, exif=exif)


def jpeg_pool(config: BenchConfig) -> list[bytes]:
    """``variants_per_photo`` distinct JPEGs per photo, made on all cores."""
    jobs = [
        (name, config.long_side, config.seed, v) for name in sorted(PHOTOS) for v in range(config.variants_per_photo)
    ]
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        return pool.map(web_jpeg, jobs, chunksize=4)


def write_bench_shards(folder: Path, pool: list[bytes], config: BenchConfig) -> dict[str, int]:
    """``distinct_shards`` tars of pool JPEGs in seeded random order (with captions and json) in folder/distinct,
    hard-linked under more names in folder/shards up to ``samples``; shard path -> samples in it."""
    rng = np.random.default_rng(config.seed)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    shards = -(-config.samples // config.samples_per_shard)
    names = sorted(PHOTOS)
    distinct = []
    for d in range(min(config.distinct_shards, shards)):
        members = []
        for i, index in enumerate(rng.integers(0, len(pool), config.samples_per_shard)):
            key, photo = f"{d:03d}{i:05d}", names[int(index) // config.variants_per_photo]
            members += [(f"{key}.jpg", pool[index]), (f"{key}.txt", PHOTOS[photo].encode())]
            members += [(f"{key}.json", json.dumps({"photo": photo, "variant": int(index)}).encode())]
        distinct.append(write_tar(folder / "distinct" / f"{d:03d}.tar", members))
    paths = {}
    for s in range(shards):
        path = folder / "shards" / f"{s:05d}.tar"
        os.link(distinct[s % len(distinct)], path)
        paths[str(path)] = config.samples_per_shard
    return paths


# --------------------------------------------------------------------------------------------------
# Sampling CPU and GPU use


class UsageSampler(threading.Thread):
    """Every SAMPLE_SECONDS: the share of all cores busy (/proc/stat) and the GPU's utilisation and memory
    (nvidia-smi; torch.cuda.utilization where nvidia-smi is absent); ``summary`` gives means and peaks."""

    def __init__(self, gpu: bool) -> None:
        super().__init__(daemon=True)
        self.gpu = gpu and torch.cuda.is_available()
        self.halt = threading.Event()
        self.cpu: list[float] = []
        self.gpu_util: list[float] = []
        self.gpu_mem: list[float] = []

    def run(self) -> None:
        last = _cpu_times()
        while not self.halt.wait(SAMPLE_SECONDS):
            now = _cpu_times()
            total, idle = now[0] - last[0], now[1] - last[1]
            if total > 0:
                self.cpu.append(100.0 * (total - idle) / total)
            last = now
            if self.gpu:
                self._sample_gpu()

    def _sample_gpu(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-i", "0"]
        try:
            util, memory = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.split(",")[:2]
            self.gpu_util.append(float(util))
            self.gpu_mem.append(float(memory))
        except (OSError, ValueError, subprocess.SubprocessError):
            try:
                self.gpu_util.append(float(torch.cuda.utilization()))
            except Exception:  # noqa: BLE001 - no NVML either: the report says n/a
                self.gpu = False

    def stop(self) -> dict[str, Any]:
        self.halt.set()
        self.join()
        return {
            "cpu_busy_pct": _mean(self.cpu),
            "gpu_util_pct": _mean(self.gpu_util),
            "gpu_util_max_pct": max(self.gpu_util) if self.gpu_util else None,
            "gpu_mem_max_mib": max(self.gpu_mem) if self.gpu_mem else None,
        }


def _cpu_times() -> tuple[float, float]:
    """(all jiffies, idle + iowait jiffies) of all cores from /proc/stat."""
    with open("/proc/stat") as f:
        values = [float(v) for v in f.readline().split()[1:]]
    return sum(values[:8]), values[3] + values[4]


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 1) if values else None


# --------------------------------------------------------------------------------------------------
# Model only and the decode stages, in this process


def model_only(config: BenchConfig) -> dict[str, Any]:
    """ViT-B-32 images/s at ``precision``: on device-resident pixels, and through embed_pixels from host pixels."""
    device = resolve_device(config.device)
    encoder = OpenClipEncoder.load(
        EncoderConfig(model="ViT-B-32", random_init=True, device=device, precision=config.precision)
    )
    side = encoder.preprocessor.input_side
    generator = torch.Generator().manual_seed(config.seed)
    pixels = torch.randint(0, 256, (config.model_batch, side, side, 3), dtype=torch.uint8, generator=generator)
    on_device = pixels.to(device)
    dtype = autocast_dtype(config.precision, device)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            encoder.model.encode_image(encoder.preprocessor.normalise(on_device))

    sampler = UsageSampler(gpu=device == "cuda")
    forward()  # warm-up: kernels chosen, memory pooled
    sampler.start()
    device_rate = _images_per_second(forward, config.model_batch, config.model_batches, device)
    usage = sampler.stop()
    host = pixels.numpy()
    host_rate = _images_per_second(lambda: encoder.embed_pixels(host), config.model_batch, config.model_batches, device)
    return {
        "model": "ViT-B-32 (random init)",
        "precision": config.precision,
        "batch": config.model_batch,
        "device_pixels_images_per_second": device_rate,
        "embed_pixels_images_per_second": host_rate,
        **usage,
    }


def _images_per_second(step: Any, batch: int, batches: int, device: str) -> float:
    """Images/s of ``batches`` calls of ``step`` on ``batch`` images each, the device drained before and after."""
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(batches):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return round(batch * batches / (time.perf_counter() - started), 1)


def decode_stages(config: BenchConfig, pool: list[bytes]) -> dict[str, Any]:
    """Images/s of the device path (decode + resize/crop + pHash, then with the model) and of the CPU path on one
    thread, over the JPEG pool, in this process."""
    from mmembed.beam.embed import SamplePreparer
    from mmembed.gpudecode import DeviceDecodingEncoder

    device = resolve_device(config.device)
    encoder_config = EncoderConfig(
        model=config.model, random_init=True, device=device, precision=config.precision, batch_size=config.batch_size
    )
    encoder = DeviceDecodingEncoder.wrap(OpenClipEncoder.load(encoder_config))
    batch = [(data, 1) for data in pool[: config.batch_size]]
    encoder.embed_jpegs(batch)  # warm-up
    decode_rate = _images_per_second(lambda: encoder.decoder.decode(batch), len(batch), 3, device)
    embed_rate = _images_per_second(lambda: encoder.embed_jpegs(batch), len(batch), 3, device)
    preparer = SamplePreparer(DecodeConfig(), encoder_config)
    raws = [raw for raw in iter_shard_samples(io.BytesIO(_tar_of(pool[:64])), "bench", ("jpg",))]
    started = time.perf_counter()
    prepared = [preparer(raw) for raw in raws]
    cpu_rate = round(len(prepared) / (time.perf_counter() - started), 1)
    return {
        "device_decode_images_per_second": decode_rate,
        "device_decode_and_model_images_per_second": embed_rate,
        "cpu_path_one_thread_images_per_second": cpu_rate,
        "cpu_path_all_cores_estimate": round(cpu_rate * (os.cpu_count() or 1), 1),
    }


def _tar_of(jpegs: list[bytes]) -> bytes:
    """A shard holding ``jpegs`` with captions, in memory."""
    with tempfile.TemporaryDirectory() as tmp:
        members = []
        for i, data in enumerate(jpegs):
            members += [(f"{i:05d}.jpg", data), (f"{i:05d}.txt", b"a photo")]
        return write_tar(Path(tmp) / "s.tar", members).read_bytes()


# --------------------------------------------------------------------------------------------------
# End to end


@dataclass
class RunResult:
    decoder: str
    workers: int
    returncode: int | None  # None: killed at the run timeout
    wall_s: float
    samples_embedded: int
    samples_per_second: float  # embedded samples over the wall time, launch to exit
    steady_samples_per_second: float | None  # first committed shard to last
    usage: dict[str, Any]
    counters: dict[str, int]
    log: str
    log_tail: str  # the last lines of the run's output, for a run that failed or was killed


def end_to_end(config: BenchConfig, shards: dict[str, int], decoder: str, workers: int, out: Path) -> RunResult:
    """``python -m pipelines.embed`` in a fresh process over ``shards``; timed, sampled and watched shard by shard."""
    args = [
        *("--shards", str(Path(next(iter(shards))).parent / "*.tar"), "--out", str(out), "--overwrite"),
        *("--model", config.model, "--random-init", "--device", config.device, "--precision", config.precision),
        *("--batch-size", str(config.batch_size), "--decode", decoder),
        *(("--decode-threads", str(config.decode_threads)) if config.decode_threads else ()),
    ]
    if workers > 1:
        args += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    log_path = out.with_suffix(".log")
    sampler = UsageSampler(gpu=config.device != "cpu")
    committed: dict[str, float] = {}
    with open(log_path, "wb") as log:
        started = time.monotonic()
        sampler.start()
        child = subprocess.Popen(
            [sys.executable, "-m", "pipelines.embed", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,  # its Beam workers and model server die with it at the timeout
        )
        returncode = _watch(child, out, committed, started, config.run_timeout)
        wall = time.monotonic() - started
        usage = sampler.stop()
    summary = _read_json(out / "summary.json")
    embedded = summary.get("embedded", sum(shards[s] for s in shards if Path(s).stem in committed))
    return RunResult(
        decoder,
        workers,
        returncode,
        round(wall, 2),
        embedded,
        round(embedded / wall, 1),
        _steady_rate(committed, config.samples_per_shard),
        usage,
        {k: v for k, v in summary.get("beam_counters", {}).items() if k.startswith(("gpu_decode", "errors"))},
        str(log_path),
        "" if returncode == 0 else _tail(log_path),
    )


def _tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log, each cut to 300 characters."""
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(line[:300] for line in text)


def _watch(
    child: subprocess.Popen, out: Path, committed: dict[str, float], started: float, timeout: float
) -> int | None:
    """Poll until ``child`` exits (its code) or ``timeout`` passes (killed: None), noting when each shard's errors
    file (written last) appears."""
    errors = out / "errors"
    while child.poll() is None:
        now = time.monotonic() - started
        if errors.exists():
            for path in errors.glob("*.parquet"):
                committed.setdefault(path.stem, now)
        if now > timeout:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            return None
        time.sleep(0.05)
    now = time.monotonic() - started
    if errors.exists():
        for path in errors.glob("*.parquet"):
            committed.setdefault(path.stem, now)
    return child.returncode


def _steady_rate(committed: dict[str, float], per_shard: int) -> float | None:
    """Samples/s between the first and the last committed shard (the shards after the first, over that time)."""
    times = sorted(committed.values())
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return round((len(times) - 1) * per_shard / (times[-1] - times[0]), 1)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------------
# Report


def machine() -> dict[str, Any]:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cores": os.cpu_count(),
        "gpu": gpu,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "load_1m": round(os.getloadavg()[0], 2),
    }


def print_report(report: dict[str, Any], config: BenchConfig) -> None:
    m = report["machine"]
    print(
        f"\nmachine: {m['cores']} cores, GPU {m['gpu'] or 'none'}, torch {m['torch']}, torchvision {m['torchvision']}"
    )
    mo = report["model_only"]
    print(
        f"model only, {mo['model']}, {mo['precision']}, batch {mo['batch']}: "
        f"{mo['device_pixels_images_per_second']:,.0f} "
        f"images/s on device pixels, {mo['embed_pixels_images_per_second']:,.0f} through embed_pixels (host uint8); "
        f"GPU util {_pct(mo['gpu_util_pct'])}"
    )
    ds = report["decode_stages"]
    print(
        f"decode stages, one process, {config.batch_size} JPEGs of ~{config.long_side} px: device decode + resize + "
        f"pHash {ds['device_decode_images_per_second']:,.0f} images/s, with {config.model} "
        f"{ds['device_decode_and_model_images_per_second']:,.0f}; "
        f"CPU path on one thread {ds['cpu_path_one_thread_images_per_second']:,.0f} (x {m['cores']} cores = "
        f"{ds['cpu_path_all_cores_estimate']:,.0f})"
    )
    shards = report["shards"]
    print(
        f"\nend to end: python -m pipelines.embed, {config.model} (random init) {config.precision}, batch "
        f"{config.batch_size}, {shards['samples']:,} samples in {shards['count']} shards of {config.samples_per_shard} "
        f"({shards['distinct']} distinct), FnApiRunner multi_processing"
    )
    columns = [("workers", 8), ("wall s", 8), ("samples/s", 11), ("steady/s", 10), ("CPU busy", 10)]
    columns += [("GPU util", 10), ("GPU max", 9), ("GPU MiB", 9)]
    print("decode".ljust(7) + "".join(name.rjust(width) for name, width in columns) + "  status")
    for run in report["runs"]:
        u = run["usage"]
        status = "killed at timeout" if run["returncode"] is None else f"exit {run['returncode']}"
        print(
            f"{run['decoder']:<7}{run['workers']:>8}{run['wall_s']:>8.1f}{run['samples_per_second']:>11,.0f}"
            f"{_num(run['steady_samples_per_second']):>10}{_pct(u['cpu_busy_pct']):>10}{_pct(u['gpu_util_pct']):>10}"
            f"{_pct(u['gpu_util_max_pct']):>9}{_num(u['gpu_mem_max_mib']):>9}  {status}"
        )
        fallbacks = {k: v for k, v in run["counters"].items() if k.startswith("gpu_decode")}
        if fallbacks:
            print(f"{'':15}counters {fallbacks}")
        if run["returncode"] != 0:
            print(f"{'':15}log {run['log']}, last lines:\n{run['log_tail']}")
    for decoder, target in TARGETS.items():
        best = max(
            (
                r["steady_samples_per_second"] or r["samples_per_second"]
                for r in report["runs"]
                if r["decoder"] == decoder
            ),
            default=None,
        )
        if best is not None:
            verdict = "met" if best >= target else "NOT met"
            print(f"target {decoder} decode >= {target:,} samples/s on 16 cores: best steady {best:,.0f}, {verdict}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the whole script on the CPU, small (about a minute)")
    parser.add_argument("--device", choices=("cuda", "cpu"))
    parser.add_argument("--samples", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--workers-cpu", type=int, nargs="+", help="worker processes for the CPU-decode runs")
    parser.add_argument("--workers-gpu", type=int, nargs="+", help="worker processes for the GPU-decode runs")
    parser.add_argument("--decode-threads", type=int, help="decode threads per worker (default: the job's)")
    parser.add_argument("--run-timeout", type=float, help="seconds per end-to-end run before it is killed")
    parser.add_argument("--workdir", help="keep shards and outputs here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON too")
    args = parser.parse_args(argv)
    given = {
        "device": args.device,
        "samples": args.samples,
        "batch_size": args.batch_size,
        "workers_cpu": tuple(args.workers_cpu) if args.workers_cpu else None,
        "workers_gpu": tuple(args.workers_gpu) if args.workers_gpu else None,
        "decode_threads": args.decode_threads,
        "run_timeout": args.run_timeout,
        "workdir": args.workdir,
        "json": args.json,
    }
    given = {k: v for k, v in given.items() if v not in (None, False)}
    return BenchConfig.for_dry_run(**given) if args.dry_run else BenchConfig(**given)


def benchmark(config: BenchConfig, work: Path) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    started = time.monotonic()
    report: dict[str, Any] = {"machine": machine(), "config": asdict(config)}
    # The pool's processes are forked before this process touches CUDA (a forked CUDA context is unusable).
    print(f"[{_since(started)}] making {len(PHOTOS) * config.variants_per_photo} distinct JPEGs ...", flush=True)
    pool = jpeg_pool(config)
    shards = write_bench_shards(work / "data", pool, config)
    report["shards"] = {
        "count": len(shards),
        "samples": sum(shards.values()),
        "distinct": min(config.distinct_shards, len(shards)),
        "mean_jpeg_kb": round(statistics.fmean(len(p) for p in pool) / 1024, 1),
    }
    print(f"[{_since(started)}] model only ...", flush=True)
    report["model_only"] = model_only(config)
    print(f"[{_since(started)}] decode stages ...", flush=True)
    report["decode_stages"] = decode_stages(config, pool)
    report["runs"] = []
    for decoder, counts in (("cpu", config.workers_cpu), ("gpu", config.workers_gpu)):
        for workers in counts:
            print(f"[{_since(started)}] end to end: {decoder} decode, {workers} workers ...", flush=True)
            out = work / f"out-{decoder}-{workers}"
            report["runs"].append(asdict(end_to_end(config, shards, decoder, workers, out)))
            shutil.rmtree(out, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def _since(started: float) -> str:
    return f"{time.monotonic() - started:6.1f} s"


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        resolve_device(config.device)
    except RuntimeError as exc:
        print(f"error: {exc}; fix: run on the GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mmembed-gpu-bench-") as tmp:
        work = Path(config.workdir or tmp)
        report = benchmark(config, work)
    print_report(report, config)
    print(f"\n{report['seconds']:.0f} s in all")
    if config.json:
        print(json.dumps(report, indent=2))
    failed = [r for r in report["runs"] if r["returncode"] not in (0, None)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
