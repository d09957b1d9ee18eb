"""CPU decode benchmark: read + decode + preprocess (no model), exact vs reduced-scale JPEG decode.

What the embed job's readers do per sample, timed without the model: read the tar (streamed), decode the
image (``mmembed.decode.decode_sample``: EXIF, RGB, sha256, perceptual hash), then open_clip's resize / crop
to the model's input and tokenize the caption (``mmembed.preprocess.prepare_sample``). Two photo sets made
from the real photos scikit-image ships: as they are (small, ~200-500 px) and upscaled to ~1,000 px on the
long side (web size), JPEG quality 90. Each set is decoded exactly and at reduced scale (``Image.draft``: a
JPEG at least twice the model's input is decoded at 1/2, 1/4 or 1/8 scale, never below the input), in 1 and
2 processes; medians over ``--repeats`` runs, printed side by side with images/s per process.

The quality side: the cosine between each photo's image embedding from the exact and the reduced decode,
with a *trained* model: ``--checkpoint FILE`` (any open_clip checkpoint for ``--model``), or by default
``mmembed-small`` trained here for ``--train-steps`` steps on scikit-learn's digits (no download).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decode_throughput.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/decode_throughput.py --samples 400 --repeats 5 --json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import Comparison, interleaved, machine, machine_line, measure, median  # noqa: E402
from mmembed.config import DecodeConfig, EncoderConfig  # noqa: E402
from mmembed.decode import decode_image, decode_sample  # noqa: E402
from mmembed.encoders.openclip import CaptionTokenizer, ImagePreprocessor, resolve_preprocess_cfg  # noqa: E402
from mmembed.preprocess import prepare_sample  # noqa: E402
from mmembed.records import ModelInput  # noqa: E402
from mmembed.shards import iter_shard_samples  # noqa: E402
from tests.photos import PHOTOS, load_photo  # noqa: E402
from tests.tarmaker import write_tar  # noqa: E402

QUERY_MODEL = EncoderConfig(model="ViT-B-32", random_init=True, device="cpu")  # geometry only: 224 x 224 input


def photo_jpegs(long_side: int | None) -> list[bytes]:
    """Each scikit-image photo as JPEG bytes (quality 90): as it is, or resized to ``long_side`` px."""
    out = []
    for name in sorted(PHOTOS):
        image = load_photo(name).convert("RGB")
        if long_side:
            scale = long_side / max(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_shards(folder: Path, jpegs: list[bytes], samples: int, parts: int) -> list[str]:
    """``parts`` tars holding ``samples`` samples in all, cycling through ``jpegs`` (each with a caption)."""
    per_part = -(-samples // parts)
    paths = []
    for p in range(parts):
        members = []
        for i in range(p * per_part, min(samples, (p + 1) * per_part)):
            members += [(f"{i:06d}.jpg", jpegs[i % len(jpegs)]), (f"{i:06d}.txt", f"photo {i}".encode())]
        paths.append(str(write_tar(folder / f"{p:03d}.tar", members)))
    return paths


def decode_shards(paths: list[str], exact: bool) -> int:
    """Read, decode and preprocess every sample of ``paths`` as the embed job's reader does; the count done."""
    preprocessor = ImagePreprocessor(resolve_preprocess_cfg(QUERY_MODEL))
    tokenizer = CaptionTokenizer(QUERY_MODEL)
    reduce_to = None if exact else preprocessor.input_side
    config = DecodeConfig(exact_decode=exact, threads=1)
    done = 0
    for path in paths:
        with open(path, "rb") as stream:
            for raw in iter_shard_samples(stream, Path(path).stem, config.image_extensions):
                decoded = decode_sample(raw, config, reduce_to)
                prepared = prepare_sample(decoded, preprocessor.to_pixels, tokenizer)
                done += isinstance(prepared, ModelInput)
    return done


def timed_run(shards: list[list[str]], exact: bool) -> float:
    """Images/s of one run: one process per list in ``shards`` (1 or 2), started together."""
    with measure() as m:
        if len(shards) == 1:
            done = decode_shards(shards[0], exact)
        else:
            with multiprocessing.get_context("fork").Pool(len(shards)) as pool:
                done = sum(pool.starmap(decode_shards, [(part, exact) for part in shards]))
    return done / m.wall_s


def split(paths: list[str], parts: int) -> list[list[str]]:
    """``paths`` dealt round-robin into ``parts`` lists (one per process)."""
    return [paths[i::parts] for i in range(parts)]


def throughput(sets: dict[str, list[str]], repeats: int) -> list[dict]:
    """Median images/s per (photo set, decode, processes); runs interleaved so load drifts hit all alike."""
    cases = {
        (name, decode, processes): partial(timed_run, split(paths, processes), decode == "exact")
        for name, paths in sets.items()
        for processes in (1, 2)
        for decode in ("exact", "reduced")
    }
    rows = interleaved(cases, repeats)
    return [
        {
            "photos": name,
            "decode": decode,
            "processes": processes,
            "images_per_second": round(median(values), 1),
            "per_process": round(median(values) / processes, 1),
        }
        for (name, decode, processes), values in rows.items()
    ]


def trained_model(args: argparse.Namespace, work: Path) -> EncoderConfig:
    """The model for the cosine check: ``--checkpoint``, or mmembed-small trained here on digits."""
    if args.checkpoint:
        return EncoderConfig(model=args.model, checkpoint=args.checkpoint, device="cpu")
    from mmembed.labelled import labelled_samples, load
    from mmembed.makeshards import ShardSpec
    from mmembed.makeshards import write_shards as make_shards
    from mmembed.train.config import TrainConfig
    from mmembed.train.loop import train

    shards = make_shards(labelled_samples(load("digits", "train")), ShardSpec(out=str(work / "digits")))["shards"]
    init = EncoderConfig(model="mmembed-small", random_init=True, device="cpu", seed=0)
    config = TrainConfig(shards=tuple(shards), out=str(work / "run"), init=init, max_steps=args.train_steps)
    result = train(replace(config, batch_size=64, lr=1e-3, augment=False))
    return EncoderConfig(model="mmembed-small", checkpoint=result["model_file"], device="cpu")


def cosines(model: EncoderConfig, jpegs: list[bytes]) -> list[float]:
    """Per photo: cosine between its image embeddings from the exact and the reduced-scale decode."""
    from mmembed.encoders.openclip import OpenClipEncoder

    encoder = OpenClipEncoder.load(model)
    preprocessor = ImagePreprocessor(resolve_preprocess_cfg(model))
    limit = DecodeConfig().max_image_pixels
    exact = np.stack([preprocessor.to_pixels(decode_image(j, limit)) for j in jpegs])
    reduced = np.stack([preprocessor.to_pixels(decode_image(j, limit, preprocessor.input_side)) for j in jpegs])
    return [float(c) for c in np.einsum("ij,ij->i", encoder.embed_pixels(exact), encoder.embed_pixels(reduced))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=240, help="samples per photo set")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--long-side", type=int, default=1000, help="long side of the upscaled (web-size) set")
    parser.add_argument("--model", default="mmembed-small")
    parser.add_argument("--checkpoint", help="a trained open_clip checkpoint for --model (default: train one)")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = {"as shipped": photo_jpegs(None), f"{args.long_side} px": photo_jpegs(args.long_side)}
        sets = {}
        for i, (name, jpegs) in enumerate(photos.items()):
            folder = work / f"set{i}"
            folder.mkdir()
            sets[name] = write_shards(folder, jpegs, args.samples, parts=8)
        rows = throughput(sets, args.repeats)
        model = trained_model(args, work)
        quality = {name: cosines(model, jpegs) for name, jpegs in photos.items()}

    report = {
        "machine": machine(),
        "samples_per_set": args.samples,
        "repeats": args.repeats,
        "throughput": rows,
        "cosine_exact_vs_reduced": {
            name: {
                "model": model.model,
                "photos": len(c),
                "min": round(min(c), 5),
                "median": round(statistics.median(c), 5),
            }
            for name, c in quality.items()
        },
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{machine_line()}; {args.samples} samples per set; medians of {args.repeats} runs")
    table = Comparison("reduced img/s", "exact img/s", "speed-up")
    by_key = {(r["photos"], r["decode"], r["processes"]): r["images_per_second"] for r in rows}
    for name in sets:
        for processes in (1, 2):
            exact, reduced = by_key[(name, "exact", processes)], by_key[(name, "reduced", processes)]
            table.add(f"{name}, {processes} process{'es' if processes > 1 else ''}", reduced, exact, ".1f")
    table.print("photos", indent="")
    for name, stats in report["cosine_exact_vs_reduced"].items():
        print(
            f"cosine exact vs reduced ({name}, {stats['model']} trained): min {stats['min']}, median {stats['median']}"
        )


if __name__ == "__main__":
    main()
