"""End to end, side by side: ``mmembed embed`` vs ``clip-retrieval inference`` vs a plain open_clip loop (the floor).

All three embed the same samples (default 1,000 JPEG variants of the photos scikit-image ships, see
``tests/photos.py``, captioned, written into 4 WebDataset shards by ``mmembed make-shards``) with the same model
and weights: mmembed's bundled ``mmembed-tiny`` open_clip config with seeded random weights saved to one
checkpoint file. Each timed run is a fresh process, timed from launch to exit (imports, model load, reading,
decoding, both towers, writing):

* mmembed:        ``.venv/bin/mmembed embed --shards ... --model mmembed-tiny --checkpoint FILE --device cpu``
* clip-retrieval: ``clip-retrieval inference --input_dataset 'shards/{00000..00003}.tar' --input_format webdataset
  --clip_model 'open_clip:mmembed-tiny/<FILE>' --enable_text --enable_image --enable_metadata ...`` from its own
  virtualenv. The bundled configs are copied into that venv's ``open_clip/model_configs`` (all_clip builds
  ``open_clip.create_model_and_transforms(name, pretrained=FILE)``, which finds a model name there).
* floor:          ``open_clip.create_model_and_transforms`` + ``webdataset`` + a torch ``DataLoader`` with the same
  workers, both towers, L2-normalise, one ``.npy`` per tower + a Parquet of keys (``plain_loop`` below).

The same batch size and decode workers go to every side (mmembed ``--decode-threads``, clip-retrieval
``--num_prepro_workers``, the floor's DataLoader workers), CPU for all, float16 vectors for all. Torch threads are
each side's own default unless ``--torch-threads`` (mmembed's flag; ``OMP_NUM_THREADS`` for the others, which have
no option). mmembed decodes large JPEGs at reduced scale by default (``--mmembed-args=--exact-decode`` turns it
off); the output check reports the cosine of its vectors to clip-retrieval's.

Runs are interleaved (each round runs every side, the order rotating by round) after ``--warmup`` untimed rounds;
the report gives medians of ``--repeats``: wall seconds, samples/s, CPU seconds of the process tree, the largest
process's peak RSS and the process tree's peak PSS (sampled every 0.2 s), and the ratio clip-retrieval / mmembed.
Target (issue): mmembed at least 2.5x faster end to end on small inputs.

clip-retrieval lives in its own virtualenv (default ``~/.cache/mmembed-bench/clip-retrieval-venv``, ``--cr-venv``),
created on first use: ``python -m venv``, a ``.pth`` file that appends this ``.venv``'s site-packages (torch,
numpy, pyarrow ... are reused, not downloaded again), then ``pip install --no-deps -r
benchmarks/requirements-clip-retrieval.txt`` (what its ``clip-retrieval`` command really imports; the versions it
declares but that are not installed there are listed in that file). Run from the repository root::

    .venv/bin/python benchmarks/vs_clip_retrieval.py
    .venv/bin/python benchmarks/vs_clip_retrieval.py --samples 1000 --shards 4 --repeats 5 --json
    .venv/bin/python benchmarks/vs_clip_retrieval.py --workdir /tmp/vscr --mmembed-args=--exact-decode
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import (  # noqa: E402
    ChildRun,
    child_env,
    fmt,
    machine,
    machine_line,
    median,
    print_table,
    ratio,
    run_command,
    run_function,
    say,
)

REQUIREMENTS = ROOT / "benchmarks" / "requirements-clip-retrieval.txt"
BUNDLED_CONFIGS = ROOT / "mmembed" / "encoders" / "configs"
DEFAULT_CR_VENV = Path.home() / ".cache" / "mmembed-bench" / "clip-retrieval-venv"
MMEMBED = Path(sys.executable).parent / "mmembed"  # the installed command (console script -> mmembed.cli:entry)
SIDES = ("mmembed", "clip-retrieval", "floor")
TARGET = 2.5  # issue: mmembed >= 2.5x faster than clip-retrieval end to end on small inputs
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class BenchConfig:
    samples: int = 1000
    shards: int = 4
    model: str = "mmembed-tiny"  # a bundled config (mmembed/encoders/configs), random weights from --seed
    batch_size: int = 64
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # mmembed's --decode-threads default
    torch_threads: int | None = None
    repeats: int = 3
    warmup: int = 1
    seed: int = 0
    sides: tuple[str, ...] = SIDES
    mmembed_args: tuple[str, ...] = ()
    cr_venv: str = str(DEFAULT_CR_VENV)
    workdir: str | None = None
    timeout: float = 1200.0
    json: bool = False


# --------------------------------------------------------------------------------------------------
# Work done in children (each imports what it needs, so this process stays small)


def make_photos(args: dict[str, Any]) -> int:
    """``samples`` deterministic JPEG variants (crop, resize, mirror) of scikit-image's photos, with captions."""
    import numpy as np

    from benchmarks.embed_throughput import photo_variant
    from mmembed.decode import to_rgb
    from tests.photos import PHOTOS, load_photo

    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args["seed"])
    photos = {name: load_photo(name) for name in PHOTOS}
    photos = {name: photo if photo.mode == "L" else to_rgb(photo) for name, photo in photos.items()}
    names = list(photos)
    for i in range(args["samples"]):
        name = names[i % len(names)]
        stem = out / f"{i:06d}"
        quality = int(rng.integers(75, 96))
        photo_variant(photos[name], rng).save(stem.with_suffix(".jpg"), format="JPEG", quality=quality)
        stem.with_suffix(".txt").write_text(PHOTOS[name] + "\n", encoding="utf-8")
        stem.with_suffix(".json").write_text(json.dumps({"source": f"skimage.data.{name}", "variant": i}))
    return args["samples"]


def make_checkpoint(args: dict[str, Any]) -> str:
    """The bundled model with seeded random weights (as ``--random-init --seed``), saved as a plain state dict."""
    import torch

    from mmembed.config import EncoderConfig
    from mmembed.encoders.openclip import create_model

    config = EncoderConfig(model=args["model"], random_init=True, seed=args["seed"], device="cpu")
    torch.save(create_model(config, "cpu").state_dict(), args["out"])
    return args["out"]


@dataclass
class FloorSample:
    """One WebDataset sample -> (pixels, tokens, key, caption, metadata), in a DataLoader worker."""

    preprocess: Any
    tokenizer: Any

    def __call__(self, sample: dict[str, Any]) -> tuple:
        import io

        from PIL import Image

        caption = sample["txt"].decode("utf-8")
        image = Image.open(io.BytesIO(sample["jpg"]))
        metadata = sample.get("json", b"").decode("utf-8")
        return self.preprocess(image), self.tokenizer([caption])[0], sample["__key__"], caption, metadata


def plain_loop(args: dict[str, Any]) -> dict[str, Any]:
    """The floor: open_clip + webdataset + a DataLoader, both towers, L2-normalised float16, npy + Parquet."""
    import numpy as np
    import open_clip
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import webdataset as wds

    if args["torch_threads"]:
        torch.set_num_threads(args["torch_threads"])
    open_clip.add_model_config(str(BUNDLED_CONFIGS))
    model, _, preprocess = open_clip.create_model_and_transforms(args["model"], pretrained=args["checkpoint"])
    model.eval()
    transform = FloorSample(preprocess, open_clip.get_tokenizer(args["model"]))
    dataset = wds.WebDataset(args["urls"], shardshuffle=False, empty_check=False).map(transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args["batch_size"], num_workers=args["workers"])
    images, texts, keys, captions, metadata = [], [], [], [], []
    with torch.inference_mode():
        for pixels, tokens, batch_keys, batch_captions, batch_metadata in loader:
            for tower, inputs, out in ((model.encode_image, pixels, images), (model.encode_text, tokens, texts)):
                out.append(torch.nn.functional.normalize(tower(inputs), dim=-1).to(torch.float16).numpy())
            keys += batch_keys
            captions += batch_captions
            metadata += batch_metadata
    out = Path(args["out"])
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "img_emb.npy", np.concatenate(images))
    np.save(out / "text_emb.npy", np.concatenate(texts))
    pq.write_table(pa.table({"key": keys, "caption": captions, "metadata": metadata}), out / "metadata.parquet")
    return {"samples": len(keys), "torch_threads": torch.get_num_threads()}


def compare_outputs(args: dict[str, Any]) -> dict[str, Any]:
    """Cosine of each side's image / text vectors to clip-retrieval's, per key: the same model really ran."""
    import numpy as np
    import pyarrow.parquet as pq

    def unit(rows: np.ndarray) -> np.ndarray:
        rows = rows.astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    vectors: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    if args.get("clip-retrieval"):
        out = Path(args["clip-retrieval"])
        keys = pq.read_table(out / "metadata" / "metadata_0.parquet", columns=["image_path"]).column(0).to_pylist()
        image, text = np.load(out / "img_emb" / "img_emb_0.npy"), np.load(out / "text_emb" / "text_emb_0.npy")
        vectors["clip-retrieval"] = keys, image, text
    if args.get("mmembed"):
        columns = ["key", "image_embedding", "text_embedding"]
        table = pq.read_table(Path(args["mmembed"]) / "embeddings", columns=columns)
        image = np.stack(table.column("image_embedding").to_numpy(zero_copy_only=False))
        text = np.stack(table.column("text_embedding").to_numpy(zero_copy_only=False))
        vectors["mmembed"] = table.column("key").to_pylist(), image, text
    if args.get("floor"):
        out = Path(args["floor"])
        keys = pq.read_table(out / "metadata.parquet", columns=["key"]).column(0).to_pylist()
        vectors["floor"] = keys, np.load(out / "img_emb.npy"), np.load(out / "text_emb.npy")
    result: dict[str, Any] = {"rows": {side: len(v[0]) for side, v in vectors.items()}}
    if "clip-retrieval" not in vectors:
        return result
    ref_keys, ref_image, ref_text = vectors["clip-retrieval"]
    where = {key: i for i, key in enumerate(ref_keys)}
    for side, (keys, image, text) in vectors.items():
        if side == "clip-retrieval":
            continue
        common = [(i, where[key]) for i, key in enumerate(keys) if key in where]
        mine, ref = np.array([c[0] for c in common], dtype=int), np.array([c[1] for c in common], dtype=int)
        cos_image = (unit(image[mine]) * unit(ref_image[ref])).sum(axis=1)
        cos_text = (unit(text[mine]) * unit(ref_text[ref])).sum(axis=1)
        result[side] = {
            "common_keys": len(common),
            "image_cosine_mean": round(float(cos_image.mean()), 5),
            "image_cosine_min": round(float(cos_image.min()), 5),
            "text_cosine_mean": round(float(cos_text.mean()), 5),
            "text_cosine_min": round(float(cos_text.min()), 5),
        }
    return result


# --------------------------------------------------------------------------------------------------
# Memory of a process tree


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (``/proc/<pid>/task/<tid>/children``, recursively)."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", encoding="ascii") as children:
                    kids = [int(p) for p in children.read().split()]
            except OSError:
                continue
            found += kids
            queue += kids
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(Pss, VmHWM) of a process in kB: its share of the pages it maps now, its peak RSS; zeros when it is gone."""
    fields = {"Pss": 0, "VmHWM": 0}
    for path in (f"/proc/{pid}/smaps_rollup", f"/proc/{pid}/status"):
        try:
            with open(path, encoding="ascii") as lines:
                for line in lines:
                    name, _, rest = line.partition(":")
                    if name in fields and not fields[name]:
                        fields[name] = int(rest.split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return fields["Pss"], fields["VmHWM"]


class TreeMemory:
    """Samples this process's descendants (the one command running) every 0.2 s: peak summed PSS of the tree
    (shared pages split between the processes that map them: forked DataLoader workers are not counted twice)
    and the largest process's peak RSS (``VmHWM``, kept from its last sample)."""

    def __init__(self) -> None:
        self.peak_tree_pss_kb = 0
        self.peak_process_hwm_kb = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(POLL_SECONDS):
            pids = descendants(me)
            samples = [memory_kb(pid) for pid in pids]
            self.max_processes = max(self.max_processes, len(pids))
            self.peak_tree_pss_kb = max(self.peak_tree_pss_kb, sum(s[0] for s in samples))
            self.peak_process_hwm_kb = max([self.peak_process_hwm_kb, *(s[1] for s in samples)])


# --------------------------------------------------------------------------------------------------
# One timed run


@dataclass
class Run:
    side: str
    label: str  # "warmup-1", "1", "2", ...
    samples: int
    wall_s: float
    cpu_s: float  # user + system of the whole process tree (reaped children included)
    peak_rss_mb: float  # the largest process's peak RSS
    peak_tree_pss_mb: float  # the process tree's peak summed PSS (sampled)
    processes: int  # most processes alive at once in the tree
    load: tuple[float, float]
    out: str

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s


def children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def timed(side: str, label: str, out: Path, start: Any) -> Run:
    """Run ``start()`` (returns a ChildRun) with the tree's memory sampled and its CPU time counted."""
    shutil.rmtree(out, ignore_errors=True)
    cpu = children_cpu()
    with TreeMemory() as memory:
        run: ChildRun = start()
    cpu = children_cpu() - cpu
    run.check()
    samples = run.result["samples"] if isinstance(run.result, dict) else count_embedded(side, out)
    return Run(
        side,
        label,
        samples,
        run.wall_s,
        cpu,
        memory.peak_process_hwm_kb / 1024,
        memory.peak_tree_pss_kb / 1024,
        memory.max_processes,
        run.load,
        str(out),
    )


def count_embedded(side: str, out: Path) -> int:
    """Samples a command embedded: mmembed's summary, or the rows of clip-retrieval's image ``.npy`` (its header)."""
    if side == "mmembed":
        return int(json.loads((out / "summary.json").read_text())["embedded"])
    rows = 0
    for path in sorted((out / "img_emb").glob("*.npy")):
        with open(path, "rb") as npy:
            npy.read(8)  # magic and version 1.0: then a 2-byte header length and the header dict
            header = npy.read(int.from_bytes(npy.read(2), "little")).decode("latin1")
        rows += ast.literal_eval(header)["shape"][0]
    return rows


# --------------------------------------------------------------------------------------------------
# The clip-retrieval virtualenv


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_purelib(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def setup_commands(venv: Path) -> list[list[str]]:
    """The commands that make the clip-retrieval venv (printed when they fail, to run by hand)."""
    python = str(venv_python(venv))
    pth = venv_purelib(venv) / "mmembed-venv.pth"
    return [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        ["sh", "-c", f"echo {shlex.quote(sysconfig.get_paths()['purelib'])} > {shlex.quote(str(pth))}"],
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(REQUIREMENTS)],
    ]


def venv_stamp() -> str:
    """What the venv is made from: the requirements, this .venv's site-packages, the Python version."""
    made_from = f"{REQUIREMENTS.read_text()}\n{sysconfig.get_paths()['purelib']}\n{sys.version}"
    return hashlib.sha256(made_from.encode()).hexdigest()


CR_PROBE = """
import json, clip_retrieval.cli, open_clip, webdataset, torch, numpy, pyarrow
from importlib.metadata import version
print(json.dumps({name: version(name) for name in ("clip-retrieval", "all-clip", "open_clip_torch", "webdataset",
    "torch", "numpy", "pyarrow", "transformers", "wandb")} | {"has_model": MODEL in open_clip.list_models(),
    "torch_from": torch.__file__}))
"""


def ensure_cr_venv(config: BenchConfig, logs: Path) -> tuple[Path, dict[str, Any]]:
    """The clip-retrieval venv's ``clip-retrieval`` command (made on first use) and its versions."""
    venv = Path(config.cr_venv)
    stamp = venv / ".mmembed-bench-ready"
    if not (stamp.is_file() and stamp.read_text().strip() == venv_stamp()):
        log = logs / "clip-retrieval-venv.log"
        say(f"clip-retrieval: creating {venv} (pip install --no-deps -r {REQUIREMENTS.name}; log: {log})")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            for step in setup_commands(venv):
                if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, env=child_env()).returncode != 0:
                    how = "\n".join(shlex.join(s) for s in setup_commands(venv))
                    failed = f"could not make the clip-retrieval venv ({step[0]} failed; see {log})"
                    raise RuntimeError(f"{failed}; by hand:\n{how}")
        stamp.write_text(venv_stamp() + "\n")
    # all_clip builds open_clip.create_model_and_transforms(NAME, pretrained=FILE): NAME must be in open_clip's
    # registry, which its import fills from open_clip/model_configs; copied on every run so edits reach it.
    configs = venv_purelib(venv) / "open_clip" / "model_configs"
    for path in BUNDLED_CONFIGS.glob("*.json"):
        shutil.copyfile(path, configs / path.name)
    probe = subprocess.run(
        [str(venv_python(venv)), "-c", f"MODEL = {config.model!r}\n{CR_PROBE}"],
        capture_output=True,
        text=True,
        env=cr_env(config),
    )
    if probe.returncode != 0:
        raise RuntimeError(
            f"clip-retrieval does not import in {venv}: {probe.stderr.strip()[-800:]}\n"
            f"fix: remove {venv} and run again, or add the missing package to {REQUIREMENTS}"
        )
    versions = json.loads(probe.stdout.strip().splitlines()[-1])
    if not versions.pop("has_model"):
        raise RuntimeError(f"open_clip in {venv} does not know {config.model!r} (copied from {BUNDLED_CONFIGS})")
    return venv / "bin" / "clip-retrieval", versions


def cr_env(config: BenchConfig) -> dict[str, str]:
    """clip-retrieval's environment: the harness's (offline, passive OpenMP) without the repository on the path."""
    env = child_env()
    env.pop("PYTHONPATH", None)
    env["WANDB_MODE"] = "disabled"  # it is off anyway (--enable_wandb False); no network attempt either way
    if config.torch_threads:
        env["OMP_NUM_THREADS"] = str(config.torch_threads)
    return env


# --------------------------------------------------------------------------------------------------
# The three sides


@dataclass
class Inputs:
    urls: list[str]
    brace: str  # the shards as one {a..b} pattern (clip-retrieval's --input_dataset)
    checkpoint: str
    cr_command: Path | None


def mmembed_command(config: BenchConfig, inputs: Inputs, out: Path) -> list[str]:
    command = [str(MMEMBED), "embed", "--shards", inputs.brace, "--out", str(out), "--model", config.model]
    command += ["--checkpoint", inputs.checkpoint, "--device", "cpu", "--batch-size", str(config.batch_size)]
    command += ["--decode-threads", str(config.workers), "--output-dtype", "float16"]
    if config.torch_threads:
        command += ["--torch-threads", str(config.torch_threads)]
    return command + list(config.mmembed_args)


def cr_command(config: BenchConfig, inputs: Inputs, out: Path) -> list[str]:
    assert inputs.cr_command is not None
    return [
        str(inputs.cr_command),
        "inference",
        "--input_dataset",
        inputs.brace,
        "--input_format",
        "webdataset",
        "--output_folder",
        str(out),
        "--clip_model",
        f"open_clip:{config.model}/{inputs.checkpoint}",  # all_clip: NAME/CHECKPOINT -> pretrained=CHECKPOINT
        "--enable_text",
        "True",
        "--enable_image",
        "True",
        "--enable_metadata",
        "True",
        "--batch_size",
        str(config.batch_size),
        "--num_prepro_workers",
        str(config.workers),
        "--use_jit",
        "False",
        "--wds_number_file_per_input_file",
        str(config.samples // config.shards),
    ]


def floor_args(config: BenchConfig, inputs: Inputs, out: Path) -> dict[str, Any]:
    return {
        "urls": inputs.urls,
        "model": config.model,
        "checkpoint": inputs.checkpoint,
        "batch_size": config.batch_size,
        "workers": config.workers,
        "torch_threads": config.torch_threads,
        "out": str(out),
    }


def run_side(config: BenchConfig, inputs: Inputs, side: str, label: str, work: Path) -> Run:
    out = work / "out" / f"{side}-{label}"
    log = work / "logs" / f"{side}-{label}.log"
    if side == "mmembed":
        command = mmembed_command(config, inputs, out)
        return timed(side, label, out, lambda: run_command(command, log=log, timeout=config.timeout))
    if side == "clip-retrieval":
        command = cr_command(config, inputs, out)
        env = cr_env(config)
        return timed(side, label, out, lambda: run_command(command, log=log, timeout=config.timeout, env=env))
    args = floor_args(config, inputs, out)
    target = "benchmarks.vs_clip_retrieval:plain_loop"
    return timed(side, label, out, lambda: run_function(target, args, log=log, timeout=config.timeout))


# --------------------------------------------------------------------------------------------------
# Set-up, runs, report


def prepare(config: BenchConfig, work: Path) -> Inputs:
    """Photos -> shards (``mmembed make-shards``) and the checkpoint, reused when ``--workdir`` already has them."""
    shards_dir, checkpoint = work / "shards", work / f"{config.model}-seed{config.seed}.pt"
    per_shard = -(-config.samples // config.shards)
    urls = [str(shards_dir / f"{i:05d}.tar") for i in range(-(-config.samples // per_shard))]
    stamp = work / "inputs.json"
    wanted = {"samples": config.samples, "shards": config.shards, "seed": config.seed, "model": config.model}
    if not (stamp.is_file() and json.loads(stamp.read_text()) == wanted and checkpoint.is_file()):
        photos = work / "photos"
        shutil.rmtree(photos, ignore_errors=True)
        shutil.rmtree(shards_dir, ignore_errors=True)
        say(f"making {config.samples} JPEG variants of scikit-image's photos in {photos}")
        run_function("benchmarks.vs_clip_retrieval:make_photos", {"out": str(photos), **wanted}).check()
        say(f"mmembed make-shards -> {len(urls)} shards of {per_shard} in {shards_dir}")
        make = [str(MMEMBED), "make-shards", "--images", str(photos), "--out", str(shards_dir)]
        make += ["--samples-per-shard", str(per_shard), "--prefix", ""]
        run_command(make, log=work / "logs" / "shards.log").check()
        say(f"{config.model} with random weights (seed {config.seed}) -> {checkpoint}")
        args = {"model": config.model, "seed": config.seed, "out": str(checkpoint)}
        run_function("benchmarks.vs_clip_retrieval:make_checkpoint", args).check()
        stamp.write_text(json.dumps(wanted))
    missing = [u for u in urls if not Path(u).is_file()]
    if missing:
        raise RuntimeError(f"make-shards did not write {missing}; see {work / 'logs' / 'shards.log'}")
    brace = str(shards_dir / f"{{00000..{len(urls) - 1:05d}}}.tar")
    return Inputs(urls, brace, str(checkpoint), None)


def rounds(config: BenchConfig, inputs: Inputs, work: Path) -> list[Run]:
    """Warm-up rounds, then ``repeats`` rounds; each round runs every side, the order rotating by round."""
    labels = [f"warmup-{i + 1}" for i in range(config.warmup)] + [str(i + 1) for i in range(config.repeats)]
    runs = []
    for index, label in enumerate(labels):
        shift = index % len(config.sides)
        for side in config.sides[shift:] + config.sides[:shift]:
            run = run_side(config, inputs, side, label, work)
            say(
                f"run {label:>9} {side:>14}: {run.samples} samples in {run.wall_s:6.2f} s "
                f"({run.samples_per_s:6.1f}/s), cpu {run.cpu_s:6.2f} s, peak RSS {run.peak_rss_mb:6.0f} MB, "
                f"tree PSS {run.peak_tree_pss_mb:6.0f} MB, load {run.load[0]}->{run.load[1]}"
            )
            if run.samples != config.samples:
                say(f"warning: {side} embedded {run.samples} of {config.samples} samples; see {work / 'logs'}")
            runs.append(run)
    return runs


def summarize(config: BenchConfig, runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per side: medians over the timed runs (warm-ups reported apart)."""
    table = {}
    for side in config.sides:
        timed_runs = [r for r in runs if r.side == side and not r.label.startswith("warmup")]
        table[side] = {
            "samples": timed_runs[-1].samples,
            "wall_s": median([r.wall_s for r in timed_runs]),
            "samples_per_s": median([r.samples_per_s for r in timed_runs]),
            "cpu_s": median([r.cpu_s for r in timed_runs]),
            "peak_rss_mb": median([r.peak_rss_mb for r in timed_runs]),
            "peak_tree_pss_mb": median([r.peak_tree_pss_mb for r in timed_runs]),
            "processes": max(r.processes for r in timed_runs),
            "walls": [round(r.wall_s, 2) for r in timed_runs],
            "warmup_wall_s": [round(r.wall_s, 2) for r in runs if r.side == side and r.label.startswith("warmup")],
        }
    return table


def print_report(config: BenchConfig, report: dict[str, Any]) -> None:
    table, context = report["sides"], report["context"]
    sides = " vs ".join(config.sides)
    print(f"\n=== end to end: {sides}, {context['samples']} samples in {context['shards']} shards ===")
    print(f"{context['machine_line']}; load over the runs {context['loads']}")
    print(
        f"model {config.model}, random weights (seed {config.seed}) in one checkpoint file; CPU; "
        f"batch {config.batch_size}; "
        f"{config.workers} decode workers each; torch threads {config.torch_threads or 'each side default'}"
    )
    for side, ran_with in context["ran_with"].items():
        print(f"  {side}: {ran_with}")
    print(f"medians of {config.repeats} interleaved runs after {config.warmup} warm-up round(s), each a new process")
    rows = [
        [
            side,
            fmt(t["wall_s"], ".2f"),
            fmt(t["samples_per_s"], ".1f"),
            fmt(t["cpu_s"], ".2f"),
            fmt(t["peak_rss_mb"], ".0f"),
            fmt(t["peak_tree_pss_mb"], ".0f"),
            t["processes"],
            " ".join(f"{w:.1f}" for w in t["walls"]),
            " ".join(f"{w:.1f}" for w in t["warmup_wall_s"]),
        ]
        for side, t in table.items()
    ]
    headers = ["side", "wall s", "samples/s", "cpu s", "peak RSS MB", "tree PSS MB", "procs", "runs s", "warm-up s"]
    print_table(headers, rows)
    for name, value in report["ratios"].items():
        print(f"  {name}: {fmt(value, '.2f')}")
    rounds_ = " ".join(fmt(r, ".2f") for r in report["per_round_ratio"])
    print(f"  clip-retrieval / mmembed, wall, each round (same load): {rounds_}")
    target = report["target"]
    print(f"target: clip-retrieval / mmembed wall >= {TARGET}: {fmt(target['ratio'], '.2f')} -> {target['verdict']}")
    check = report.get("output_check") or {}
    for side in ("mmembed", "floor"):
        if side in check:
            c = check[side]
            print(
                f"output check, {side} vs clip-retrieval over {c['common_keys']} keys: cosine image mean "
                f"{c['image_cosine_mean']} (min {c['image_cosine_min']}), text mean {c['text_cosine_mean']} "
                f"(min {c['text_cosine_min']})"
            )


def ran_with(config: BenchConfig, inputs: Inputs, work: Path, cr_versions: dict[str, Any] | None) -> dict[str, str]:
    out = work / "out" / "SIDE-N"
    lines = {}
    if "mmembed" in config.sides:
        threads = config.torch_threads or "its CPU default (cores - decode threads, >= 1)"
        lines["mmembed"] = f"{shlex.join(mmembed_command(config, inputs, out))}  [torch threads: {threads}]"
    if "clip-retrieval" in config.sides:
        threads = config.torch_threads or f"torch default ({os.cpu_count()})"
        versions = ", ".join(f"{k} {v}" for k, v in (cr_versions or {}).items() if k != "torch_from")
        lines["clip-retrieval"] = (
            f"{shlex.join(cr_command(config, inputs, out))}  [torch threads: {threads}; DataLoader workers; "
            f"venv {config.cr_venv}: {versions}; torch from {(cr_versions or {}).get('torch_from')}]"
        )
    if "floor" in config.sides:
        threads = config.torch_threads or f"torch default ({os.cpu_count()})"
        lines["floor"] = (
            f"benchmarks.vs_clip_retrieval:plain_loop in .venv (open_clip.create_model_and_transforms, webdataset, "
            f"DataLoader with {config.workers} workers)  [torch threads: {threads}]"
        )
    return lines


def benchmark(config: BenchConfig, work: Path) -> dict[str, Any]:
    before = machine()
    inputs = prepare(config, work)
    cr_versions = None
    if "clip-retrieval" in config.sides:
        inputs.cr_command, cr_versions = ensure_cr_venv(config, work / "logs")
    runs = rounds(config, inputs, work)
    table = summarize(config, runs)
    last = {r.side: r.out for r in runs}
    check = run_function("benchmarks.vs_clip_retrieval:compare_outputs", last).check().result
    mm, cr, floor = (table.get(s, {}).get("wall_s") for s in SIDES)
    cpu = {s: table.get(s, {}).get("cpu_s") for s in SIDES}
    ratios = {
        "clip-retrieval / mmembed, wall": ratio(cr, mm),
        "clip-retrieval / mmembed, cpu": ratio(cpu["clip-retrieval"], cpu["mmembed"]),
        "mmembed / floor, wall": ratio(mm, floor),
        "clip-retrieval / floor, wall": ratio(cr, floor),
    }
    walls = {(r.side, r.label): r.wall_s for r in runs if not r.label.startswith("warmup")}
    labels = sorted({label for _, label in walls}, key=int)
    per_round = [ratio(walls.get(("clip-retrieval", n)), walls.get(("mmembed", n))) for n in labels]
    headline = ratios["clip-retrieval / mmembed, wall"]
    met = None if headline is None else headline >= TARGET
    return {
        "config": asdict(config),
        "context": {
            "samples": table[config.sides[0]]["samples"],
            "shards": len(inputs.urls),
            "machine_line": machine_line(before),
            "loads": [list(r.load) for r in runs],
            "ran_with": ran_with(config, inputs, work, cr_versions),
            "clip_retrieval_versions": cr_versions,
        },
        "sides": table,
        "runs": [asdict(r) for r in runs],
        "ratios": ratios,
        "per_round_ratio": [None if r is None else round(r, 2) for r in per_round],
        "target": {
            "ratio": ratios["clip-retrieval / mmembed, wall"],
            "min": TARGET,
            "met": met,
            "verdict": "n/a" if met is None else ("met" if met else "NOT met"),
        },
        "output_check": check,
    }


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    d = BenchConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=d.samples, help="samples to generate (default: 1000)")
    parser.add_argument("--shards", type=int, default=d.shards, help="shards they are written into (default: 4)")
    configs = sorted(p.stem for p in BUNDLED_CONFIGS.glob("*.json"))
    parser.add_argument("--model", default=d.model, choices=configs, help="bundled open_clip config (random weights)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--workers", type=int, default=d.workers, help="decode workers/threads for every side")
    parser.add_argument("--torch-threads", type=int, help="torch threads for every side (default: each side's own)")
    parser.add_argument("--repeats", type=int, default=d.repeats, help="timed runs per side; medians (default: 3)")
    parser.add_argument("--warmup", type=int, default=d.warmup, help="untimed rounds first (default: 1)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seeds the photo variants and the weights")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    more = "extra `mmembed embed` options as one string: --mmembed-args='--exact-decode ...'"
    parser.add_argument("--mmembed-args", default="", help=more)
    parser.add_argument("--cr-venv", default=d.cr_venv, help="clip-retrieval's virtualenv (made when missing)")
    parser.add_argument("--workdir", help="keep photos, shards, outputs and logs here (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="seconds one run may take")
    parser.add_argument("--json", action="store_true", help="also print the whole result as JSON")
    args = parser.parse_args(argv)
    if min(args.samples, args.shards, args.batch_size, args.repeats) < 1 or args.warmup < 0 or args.workers < 0:
        parser.error("--samples, --shards, --batch-size and --repeats must be >= 1, --warmup and --workers >= 0")
    return BenchConfig(
        **{
            **vars(args),  # one option per field, same names
            "sides": tuple(args.sides),
            "mmembed_args": tuple(shlex.split(args.mmembed_args)),
            "cr_venv": str(Path(args.cr_venv).expanduser().resolve()),
        }
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    if not MMEMBED.is_file():
        print(f"error: {MMEMBED} not found; run this with the project's .venv/bin/python", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="mmembed-vs-cr-") as tmp:
        work = Path(config.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        try:
            report = benchmark(config, work)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print_report(config, report)
    if config.json:
        print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
