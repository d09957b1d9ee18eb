"""Dedup benchmark: quality of exact / perceptual / semantic duplicate detection on real photos with generated
near-duplicates, and how the semantic method scales to 1,000,000 synthetic embeddings.

It PRINTS figures (it is not a pass/fail test).

Quality (``--skip-quality`` to leave it out)
    Sources: every photo scikit-image ships inside its wheel that loads offline (21 of them; ``cat`` is left
    out: it is the same array as ``chelsea``; ``stereo_motorcycle``'s two views are near-duplicates of each
    other; checkerboard / binary_blobs / shepp_logan_phantom are synthetic patterns), scikit-learn's two
    bundled photos (``load_sample_images``: china, flower; scikit-learn comes with the ``demo`` extra:
    ``pip install 'mmembed[demo]'``, skipped with a note when absent), and two non-overlapping 45% x 45% crops
    (top-left and bottom-right quadrant) of every photo at least 400 px on both sides (not the logo): extra
    distinct images. Each source is stored as JPEG q92 (its "original"); from the decoded original a seeded RNG
    makes near-duplicates: ``copy`` (the very same bytes), ``jpeg`` (re-encode at quality 30-90), ``resize``
    (0.3-0.8x), ``crop`` (80-95% of each side, random offset), ``flip`` (horizontal), ``jitter`` (brightness,
    contrast and saturation x0.7-1.3 with ImageEnhance), ``rotate`` (2-8 degrees either way, black corners),
    ``text`` (a caption drawn with Pillow's default font, 1/12 of the height, white with a black outline);
    ``--variants`` of each (1 for copy); the non-JPEG transforms are saved as JPEG q85-95.
    Every image goes through the embed job's own path: ``mmembed.decode.decode_image`` -> sha256 of the bytes,
    ``perceptual_hash`` (64-bit pHash) and the image embedding of ``OpenClipEncoder`` (``preprocessor.to_pixels``
    -> ``embed_pixels``). Default model: the bundled ``mmembed-tiny`` with RANDOM weights (no trained weights
    can be fetched offline): its semantic figures are printed with that label and mean nothing about a trained
    model; pass ``--model NAME --checkpoint FILE`` (an open_clip state dict) or ``--pretrained TAG`` (a warm
    open_clip cache) to measure a real one.
    Ground truth, per pair of images: duplicate = same source; negative = different photos, or the two
    non-overlapping crops of one photo ("sibling" negatives, reported apart too); pairs of a crop source and its
    parent photo share content but are not near-duplicates either way: left out of every figure ("related").
    Methods: exact (equal sha256, ``exact.hash_codes``), perceptual (``perceptual.hamming_pairs`` at the
    default threshold of 8 bits and a sweep), semantic (``tests.dedup.inmemory.find_semantic_duplicates``: pairs with
    cosine > 1 - eps inside one final k-means cluster, at the default eps 0.05 and a sweep, next to the same
    threshold on all pairs without clustering), each on pairs; then ``run_dedup`` end to end on the images
    written as the embed job's Parquet (one method at a time and all three), scored on the pairs its groups
    imply (groups are transitive, so this is what dedup would remove). Precision = flagged duplicate pairs /
    flagged pairs (duplicates + negatives); recall = flagged duplicate pairs / duplicate pairs; per
    transformation: the recall of (original, transformed copy) pairs; precision is overall (negatives are
    pairs of distinct images, which belong to no transformation).

Scale (``--skip-scale``)
    ``--sizes`` (default 100k, 200k, 500k, 1M) rows of ``--dim`` (512) seeded synthetic unit vectors: 1,000
    anisotropic gaussian blobs (spread in a random 32-d subspace of each, plus isotropic noise: pairs inside a
    blob sit at cosine ~0.5, far below the threshold) with 5% of the rows planted as near-copies of another row at
    cosine uniform in [1 - 0.9 eps, 0.999] (all above 1 - eps). Written block by block as the embed job's Parquet
    (``tests.index.synth``: vectors from ``ClusteredVectors``, ``write_shard``; sha256 and pHash distinct per row;
    text column = image column) under ``--workdir``,
    generated once and reused; a smaller size is a prefix of the larger (its first files, symlinked). Each size
    runs ``run_dedup(DedupConfig(methods=('semantic',), eps, keep='first'))`` end to end on its Parquet dir in a
    fresh child process (``OMP_WAIT_POLICY=PASSIVE``): wall and CPU time of the call, time per phase (the
    library's functions wrapped in the child, nothing changed: k-means training, assignment, in-cluster
    comparison, the library's own recall check, groups and outputs; "read" is the rest of the semantic pass:
    Parquet decode and the memmap copy), and peak RSS = the child's ``VmHWM`` read right after the call (not
    ``ru_maxrss``: Linux carries the parent's RSS into a child's across exec; the child's own ``ru_maxrss`` is
    printed next to it), split into the highest anonymous and file-backed RSS seen (polled every 0.1 s: the
    vector memmap's pages count as file-backed RSS, which the kernel can drop under pressure). Pair recall
    against exact all-pairs at the same threshold: exact range search (faiss ``range_ground_truth``, brute
    force over all n rows, independent of the library's code) for a seeded sample of query rows, as the
    library's ``pair_recall`` measures it: ``--truth-queries`` rows drawn from the planted rows (where the pairs
    are; the 0.99 target is judged on these) plus as many drawn uniformly (any background pair), every true
    pair of them scored found when both rows share a final cluster (in-cluster comparison is exhaustive). The
    library's own figure (1,000 uniform rows) is printed too. Growth: time ratios between sizes next to the
    n log n, n^1.5 and n^2 predictions, and the exponent b of a least-squares fit time ~ n^b (n log n over
    100k-1M is b ~ 1.08; n^2 is 2; "close to n log n" is judged as b <= n log n's b + 0.15), for wall and CPU
    time (on a shared machine wall time also measures the neighbours' load) and per phase. Sizes that did not
    finish in ``--timeout`` are extrapolated from the fit.

Run it from the repository root (the default run took ~10 minutes on a busy 2-core machine, 4 of them the 1M size,
plus ~1 minute generating the data the first time; the data, ~4.3 GB for 1M rows, is kept under ``--workdir``
for the next run)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dedup_eval.py
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dedup_eval.py --skip-scale --json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dedup_eval.py --skip-quality --sizes 20000,50000
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dedup_eval.py --skip-scale --model ViT-B-32 --checkpoint ckpt.pt
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.harness import (  # noqa: E402
    GIB,
    child_env,
    fmt,
    machine_line,
    measure,
    passive_openmp,
    print_table,
    proc_status_bytes,
    run_function,
    say,
)
from mmembed.dedup.config import DEFAULT_EPS, DEFAULT_PHASH_THRESHOLD  # noqa: E402
from tests.index.synth import ClusteredVectors, encoder_provenance, unit, write_shard  # noqa: E402

DEFAULT_WORKDIR = "/tmp/mmembed-dedup-eval"
DEFAULT_SIZES = (100_000, 200_000, 500_000, 1_000_000)
RECALL_TARGET = 0.99
VECTORS = "image_embedding"

# ---------------------------------------------------------------------------------------------- quality: data

# scikit-image photos that ship in its wheel and load offline (checked: the rest need pooch and a download).
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "cell",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "microaneurysms",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
)
NOT_USED = {
    "cat": "the same array as chelsea",
    "stereo_motorcycle": "its left and right views are near-duplicates of each other",
    "checkerboard, binary_blobs, shepp_logan_phantom": "synthetic patterns, not photos",
    "lfw_subset": "25x25 thumbnails",
}
ORIGINAL_QUALITY = 92
CROP_SIDE = 0.45  # crop negatives: this share of each side, one inside the top-left quadrant, one bottom-right
CROP_MIN_SIDE = 400
TRANSFORMS = ("copy", "jpeg", "resize", "crop", "flip", "jitter", "rotate", "text")
WORDS = ("sunset", "holiday", "2019", "#nofilter", "(c) photo", "sample", "archive", "best of", "meme", "draft")


@dataclass
class Source:
    name: str
    image: Any  # PIL.Image, RGB
    parent: str  # the photo it comes from (its own name for a whole photo)
    origin: str  # where the photo comes from


@dataclass
class Item:
    source: int
    transform: str  # 'original' or one of TRANSFORMS
    params: dict[str, Any]
    data: bytes


def load_sources(seed: int) -> tuple[list[Source], list[str]]:
    """Whole photos (scikit-image, scikit-learn) and the crop negatives; plus notes on what was left out."""
    from PIL import Image

    from mmembed.decode import to_rgb
    from tests.photos import load_photo

    notes = [f"not used: {name} ({why})" for name, why in NOT_USED.items()]
    photos: list[Source] = []
    for name in PHOTOS:
        try:
            photos.append(Source(name, to_rgb(load_photo(name)), name, "scikit-image"))
        except Exception as exc:  # noqa: BLE001 - a photo this scikit-image lacks is noted, not fatal
            notes.append(f"skipped skimage.data.{name}: {type(exc).__name__}: {exc}")
    try:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for path, array in zip(bunch.filenames, bunch.images, strict=True):
            photos.append(
                Source(Path(path).stem, Image.fromarray(array).convert("RGB"), Path(path).stem, "scikit-learn")
            )
    except ImportError:
        notes.append(
            "scikit-learn not installed: its 2 sample photos (china, flower) left out (pip install 'mmembed[demo]')"
        )
    crops: list[Source] = []
    rng = np.random.default_rng([seed, 7])
    for photo in photos:
        w, h = photo.image.size
        if min(w, h) < CROP_MIN_SIDE or photo.name == "logo":  # the logo's corners are blank: crops alike
            continue
        cw, ch = int(w * CROP_SIDE), int(h * CROP_SIDE)
        for tag, (x0, y0) in (("tl", (0, 0)), ("br", (w // 2, h // 2))):
            x = x0 + int(rng.integers(0, w // 2 - cw + 1))
            y = y0 + int(rng.integers(0, h // 2 - ch + 1))
            crops.append(Source(f"{photo.name}#{tag}", photo.image.crop((x, y, x + cw, y + ch)), photo.name, "crop"))
    return photos + crops, notes


def encode_jpeg(image: Any, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def transform(image: Any, name: str, rng: np.random.Generator) -> tuple[Any, dict[str, Any], int]:
    """(transformed image, its parameters, JPEG quality to save it at)."""
    from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps

    w, h = image.size
    quality = int(rng.integers(85, 96))
    if name == "jpeg":
        quality = int(rng.integers(30, 91))
        return image, {"quality": quality}, quality
    if name == "resize":
        scale = float(rng.uniform(0.3, 0.8))
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        return image.resize(size, Image.Resampling.BICUBIC), {"scale": round(scale, 3)}, quality
    if name == "crop":
        keep = float(rng.uniform(0.80, 0.95))
        cw, ch = round(w * keep), round(h * keep)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x, y, x + cw, y + ch)), {"keep": round(keep, 3), "x": x, "y": y}, quality
    if name == "flip":
        return ImageOps.mirror(image), {}, quality
    if name == "jitter":
        factors = {k: float(rng.uniform(0.7, 1.3)) for k in ("brightness", "contrast", "saturation")}
        out = ImageEnhance.Brightness(image).enhance(factors["brightness"])
        out = ImageEnhance.Contrast(out).enhance(factors["contrast"])
        out = ImageEnhance.Color(out).enhance(factors["saturation"])
        return out, {k: round(v, 3) for k, v in factors.items()}, quality
    if name == "rotate":
        angle = float(rng.uniform(2, 8)) * (1 if rng.random() < 0.5 else -1)
        return image.rotate(angle, Image.Resampling.BICUBIC, expand=False, fillcolor=(0, 0, 0)), {"deg": angle}, quality
    if name == "text":
        words = " ".join(rng.choice(WORDS, size=3, replace=False))
        size = max(10, h // 12)
        font = ImageFont.load_default(size=size)
        out = image.copy()
        draw = ImageDraw.Draw(out)
        left, top, right, bottom = draw.textbbox((0, 0), words, font=font, stroke_width=2)
        x = int(rng.integers(0, max(1, w - (right - left)) + 1))
        y = int(rng.integers(0, max(1, h - (bottom - top)) + 1))
        draw.text((x, y), words, font=font, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
        return out, {"text": words, "size": size}, quality
    raise ValueError(name)


def make_items(sources: list[Source], variants: int, seed: int) -> list[Item]:
    """Each source's original (JPEG q92) and its transformed copies, all as encoded bytes."""
    from PIL import Image

    items = []
    for index, source in enumerate(sources):
        rng = np.random.default_rng([seed, 11, index])
        original = encode_jpeg(source.image, ORIGINAL_QUALITY)
        items.append(Item(index, "original", {"quality": ORIGINAL_QUALITY}, original))
        decoded = Image.open(io.BytesIO(original)).convert("RGB")
        for name in TRANSFORMS:
            for _ in range(1 if name == "copy" else variants):
                if name == "copy":
                    items.append(Item(index, name, {}, original))
                    continue
                image, params, quality = transform(decoded, name, rng)
                items.append(Item(index, name, {**params, "saved_quality": quality}, encode_jpeg(image, quality)))
    return items


@dataclass
class Features:
    sha256: list[str]
    phash: np.ndarray  # uint64
    embedding: np.ndarray  # float32 unit rows
    width: np.ndarray
    height: np.ndarray
    provenance: dict[str, Any]
    random_init: bool
    embed_s: float


def features(items: list[Item], encoder_args: dict[str, Any]) -> Features:
    """The embed job's per-image path: decode_image -> sha256, perceptual_hash, to_pixels -> embed_pixels."""
    from mmembed.config import DecodeConfig, EncoderConfig
    from mmembed.decode import decode_image, perceptual_hash
    from mmembed.dedup.perceptual import phash_codes
    from mmembed.encoders.openclip import OpenClipEncoder, provenance

    weighted = any(encoder_args.get(k) for k in ("checkpoint", "pretrained"))
    config = EncoderConfig(**encoder_args, random_init=not weighted)
    encoder = OpenClipEncoder.load(config)
    max_pixels = DecodeConfig().max_image_pixels
    sha, phash, pixels, width, height = [], [], [], [], []
    for item in items:
        image = decode_image(item.data, max_pixels)
        sha.append(hashlib.sha256(item.data).hexdigest())
        phash.append(perceptual_hash(image))
        pixels.append(encoder.preprocessor.to_pixels(image))
        width.append(image.width)
        height.append(image.height)
    began = time.perf_counter()
    batches = [encoder.embed_pixels(np.stack(pixels[i : i + 64])) for i in range(0, len(pixels), 64)]
    embed_s = time.perf_counter() - began
    prov = provenance(config)
    return Features(
        sha,
        phash_codes(phash),
        np.concatenate(batches).astype(np.float32),
        np.array(width),
        np.array(height),
        prov,
        prov["weights"] == "random-init",
        embed_s,
    )


# ---------------------------------------------------------------------------------------------- quality: scoring


@dataclass
class Truth:
    """Boolean n x n upper-triangle masks of every scored pair class."""

    positive: np.ndarray
    negative: np.ndarray  # includes sibling
    sibling: np.ndarray
    related: np.ndarray  # excluded from scoring
    per_transform: dict[str, np.ndarray]  # (original, transformed copy) pairs


def make_truth(items: list[Item], sources: list[Source]) -> Truth:
    n = len(items)
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    src = np.array([it.source for it in items])
    names = np.array([sources[s].name for s in src])
    parents = np.array([sources[s].parent for s in src])
    whole = names == parents
    same_source = src[:, None] == src[None, :]
    same_parent = parents[:, None] == parents[None, :]
    related = same_parent & ~same_source & (whole[:, None] | whole[None, :]) & upper
    sibling = same_parent & ~same_source & ~whole[:, None] & ~whole[None, :] & upper
    positive = same_source & upper
    negative = ~same_source & ~related & upper
    kinds = np.array([it.transform for it in items])
    original = kinds == "original"
    per_transform = {}
    for name in TRANSFORMS:
        mask = same_source & (
            (original[:, None] & (kinds == name)[None, :]) | ((kinds == name)[:, None] & original[None, :])
        )
        per_transform[name] = mask & upper
    return Truth(positive, negative, sibling, related, per_transform)


def pairs_matrix(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    pred = np.zeros((n, n), dtype=bool)
    a, b = np.minimum(left, right), np.maximum(left, right)
    pred[a, b] = True
    np.fill_diagonal(pred, False)
    return pred


def labels_matrix(labels: np.ndarray) -> np.ndarray:
    """Pairs of rows sharing a label >= 0 (a group, a cluster), upper triangle."""
    labels = np.asarray(labels)
    same = (labels[:, None] == labels[None, :]) & (labels >= 0)[:, None]
    return np.triu(same, 1)


def score(pred: np.ndarray, truth: Truth) -> dict[str, Any]:
    tp = int(np.count_nonzero(pred & truth.positive))
    fp = int(np.count_nonzero(pred & truth.negative))
    positives = int(np.count_nonzero(truth.positive))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / positives if positives else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
    per = {}
    for name, mask in truth.per_transform.items():
        total = int(np.count_nonzero(mask))
        per[name] = int(np.count_nonzero(pred & mask)) / total if total else None
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "fp_sibling": int(np.count_nonzero(pred & truth.sibling)),
        "flagged_related": int(np.count_nonzero(pred & truth.related)),
        "recall_per_transform": per,
    }


ALL_METHODS = ("exact", "perceptual", "semantic")
DEDUP_COMBOS = (("exact",), ("perceptual",), ("semantic",), ("exact", "perceptual"), ALL_METHODS)
PHASH_SWEEP = (0, 2, 4, 6, 8, 10, 12, 14, 16, 20, 24)
EPS_SWEEP = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)


def semantic_pairs(embedding: np.ndarray, eps: float, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(clustered pairs, all pairs) above 1 - eps as masks, with the library's stats; the clustered pairs are the
    above-threshold pairs inside one final cluster (in-cluster comparison is exhaustive)."""
    from mmembed.dedup.config import SemanticConfig
    from tests.dedup.inmemory import find_semantic_duplicates

    found = find_semantic_duplicates(embedding, SemanticConfig(eps=eps, seed=seed))
    sims = embedding @ embedding.T
    above = np.triu(sims > np.float32(1.0 - eps), 1)
    clustered = above & labels_matrix(found.clusters)
    stats = dict(found.stats, pairs_check=int(np.count_nonzero(clustered)) - int(found.links.pairs))
    return clustered, above, stats


def run_dedup_groups(folder: Path, methods: tuple[str, ...], eps: float, n: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``run_dedup`` end to end on the quality set's Parquet: each row's group (-1 = no duplicate), summary."""
    from mmembed.dedup import DedupConfig, run_dedup
    from mmembed.dedup.outputs import DUPLICATES_FILE

    out = folder / ("out-" + "-".join(methods))
    summary = run_dedup(
        DedupConfig(
            str(folder),
            str(out),
            methods=methods,
            keep="first",
            eps=eps,
            device="cpu",
            overwrite=True,
            allow_random_weights=True,  # the quality report flags a random-init model's semantic figures itself
        )
    )
    table = pq.read_table(out / DUPLICATES_FILE, columns=["key", "group_id"]).to_pydict()
    groups = np.full(n, -1, dtype=np.int64)
    for key, group in zip(table["key"], table["group_id"], strict=True):
        groups[int(key.rsplit("-", 1)[1])] = group
    return groups, summary


def separation(items: list[Item], feats: Features, truth: Truth) -> dict[str, dict[str, Any]]:
    """pHash bits and embedding cosine of (original, copy) pairs per transform, and of negative pairs."""
    from mmembed.dedup.perceptual import hamming

    bits = hamming(feats.phash[:, None], feats.phash[None, :]).astype(np.int64)
    sims = feats.embedding @ feats.embedding.T
    out: dict[str, dict[str, Any]] = {}
    for name, mask in [
        *truth.per_transform.items(),
        ("negatives", truth.negative),
        ("  of which siblings", truth.sibling),
    ]:
        if not mask.any():
            continue
        b, s = bits[mask], sims[mask]
        out[name] = {
            "pairs": int(mask.sum()),
            "phash_min": int(b.min()),
            "phash_p1": float(np.percentile(b, 1)),
            "phash_median": float(np.median(b)),
            "phash_p95": float(np.percentile(b, 95)),
            "phash_max": int(b.max()),
            "cos_min": float(s.min()),
            "cos_median": float(np.median(s)),
            "cos_p99": float(np.percentile(s, 99)),
            "cos_max": float(s.max()),
        }
    return out


def run_quality(cfg: EvalConfig) -> dict[str, Any]:
    from mmembed.dedup.exact import hash_codes
    from mmembed.dedup.perceptual import hamming_pairs

    began = time.perf_counter()
    sources, notes = load_sources(cfg.seed)
    items = make_items(sources, cfg.variants, cfg.seed)
    say(f"quality: {len(sources)} sources, {len(items)} images; decoding, hashing, embedding")
    encoder_args = {"model": cfg.model, "checkpoint": cfg.checkpoint, "pretrained": cfg.pretrained, "device": "cpu"}
    feats = features(items, {k: v for k, v in encoder_args.items() if v is not None})
    truth = make_truth(items, sources)
    n = len(items)
    methods: dict[str, dict[str, Any]] = {}

    codes = hash_codes(feats.sha256)
    methods["exact (sha256)"] = score(np.triu(codes[:, None] == codes[None, :], 1), truth)

    phash_sweep = {}
    for bits in sorted({*PHASH_SWEEP, DEFAULT_PHASH_THRESHOLD}):
        left, right, _ = hamming_pairs(feats.phash, bits)
        phash_sweep[bits] = score(pairs_matrix(n, left, right), truth)
    methods[f"perceptual (pHash <= {DEFAULT_PHASH_THRESHOLD} bits)"] = phash_sweep[DEFAULT_PHASH_THRESHOLD]

    eps_sweep = {}
    for eps in sorted({*EPS_SWEEP, cfg.eps}):
        clustered, above, stats = semantic_pairs(feats.embedding, eps, cfg.seed)
        eps_sweep[eps] = {"clustered": score(clustered, truth), "all_pairs": score(above, truth), "stats": stats}
    methods[f"semantic (cos > {1 - cfg.eps:g}, k-means)"] = eps_sweep[cfg.eps]["clustered"]
    methods[f"semantic (cos > {1 - cfg.eps:g}, all pairs)"] = eps_sweep[cfg.eps]["all_pairs"]

    folder = Path(cfg.workdir) / "quality"
    write_shard(
        folder / "embeddings" / "q-00000.parquet",
        "q-00000",
        feats.embedding,
        None,  # text column = image column
        feats.provenance,
        sha256=feats.sha256,
        phash=feats.phash,
        width=feats.width,
        height=feats.height,
        similarity=np.zeros(n),
        text_fields=False,
    )
    dedup_summaries = {}
    for combo in DEDUP_COMBOS:
        labels, summary = run_dedup_groups(folder, combo, cfg.eps, n)
        name = f"run_dedup groups: {' + '.join(combo)}"
        methods[name] = score(labels_matrix(labels), truth)
        dedup_summaries[name] = {
            k: summary.get(k) for k in ("groups", "duplicates", "removed", "share_removed", "seconds", "semantic")
        }

    counts = {t: sum(1 for it in items if it.transform == t) for t in ("original", *TRANSFORMS)}
    return {
        "sources": len(sources),
        "photos": sum(1 for s in sources if s.origin != "crop"),
        "crops": sum(1 for s in sources if s.origin == "crop"),
        "images": n,
        "images_per_transform": counts,
        "pairs": {
            "duplicate": int(truth.positive.sum()),
            "negative": int(truth.negative.sum()),
            "of_which_sibling": int(truth.sibling.sum()),
            "related_excluded": int(truth.related.sum()),
        },
        "notes": notes,
        "model": {k: feats.provenance.get(k) for k in ("model", "weights", "checkpoint", "dim")},
        "random_init": feats.random_init,
        "embed_s": round(feats.embed_s, 3),
        "methods": methods,
        "phash_sweep": phash_sweep,
        "eps_sweep": eps_sweep,
        "separation": separation(items, feats, truth),
        "run_dedup": dedup_summaries,
        "seconds": round(time.perf_counter() - began, 1),
    }


RANDOM_LABEL = (
    "random-init model: semantic quality figures not meaningful until a trained model is used (issue: train); "
    "pass --model NAME --checkpoint FILE"
)


def print_quality(q: dict[str, Any], eps: float) -> None:
    print("\n== Quality: duplicate pairs on real photos with generated near-duplicates ==")
    print(
        f"  {q['sources']} sources ({q['photos']} photos + {q['crops']} crop negatives) -> {q['images']} images; "
        f"pairs: {q['pairs']['duplicate']:,} duplicate, {q['pairs']['negative']:,} negative "
        f"({q['pairs']['of_which_sibling']:,} sibling crops), {q['pairs']['related_excluded']:,} crop/parent excluded"
    )
    print("  images per transform: " + ", ".join(f"{k} {v}" for k, v in q["images_per_transform"].items()))
    model = q["model"]
    print(f"  embedding model: {model['model']} ({model['weights']}, dim {model['dim']}); embedding {q['embed_s']} s")
    if q["random_init"]:
        print(f"  !! {RANDOM_LABEL}")
    for note in q["notes"]:
        print(f"  note: {note}")
    transforms = list(TRANSFORMS)
    print("\n  Per method (precision over duplicate + negative pairs; recall: all duplicate pairs, then per transform")
    print("  = (original, transformed) pairs); FP sib = false positives between the two crops of one photo")
    headers = ["method", "precision", "recall", "F1", "TP", "FP", "FP sib", *transforms]
    rows = []
    for name, s in q["methods"].items():
        label = name + (" [random-init]" if q["random_init"] and "semantic" in name else "")
        per = [fmt(s["recall_per_transform"][t], ".2f") for t in transforms]
        rows.append(
            [label, fmt(s["precision"], ".3f"), fmt(s["recall"], ".3f"), fmt(s["f1"], ".3f"), s["tp"], s["fp"]]
            + [s["fp_sibling"], *per]
        )
    print_table(headers, rows)

    print("\n  Perceptual threshold sweep (perceptual.hamming_pairs; default", DEFAULT_PHASH_THRESHOLD, "bits)")
    rows = []
    for bits, s in q["phash_sweep"].items():
        per = [fmt(s["recall_per_transform"][t], ".2f") for t in transforms]
        rows.append([f"<= {bits} bits", fmt(s["precision"], ".3f"), fmt(s["recall"], ".3f"), fmt(s["f1"], ".3f")])
        rows[-1] += [s["tp"], s["fp"], *per]
    print_table(["threshold", "precision", "recall", "F1", "TP", "FP", *transforms], rows)

    tag = " [random-init model]" if q["random_init"] else ""
    print(f"\n  Semantic eps sweep{tag} (default eps {eps:g}): k-means clustered (the library) / all pairs")
    rows = []
    for e, entry in q["eps_sweep"].items():
        c, a = entry["clustered"], entry["all_pairs"]
        per = [fmt(c["recall_per_transform"][t], ".2f") for t in transforms]
        rows.append(
            [f"eps {e:g} (cos > {1 - e:g})", fmt(c["precision"], ".3f"), fmt(c["recall"], ".3f"), fmt(c["f1"], ".3f")]
            + [c["fp"], fmt(a["precision"], ".3f"), fmt(a["recall"], ".3f"), entry["stats"]["clusters"], *per]
        )
    print_table(["eps", "P clust", "R clust", "F1", "FP", "P all", "R all", "k", *transforms], rows)

    print("\n  Separation: pHash bits and embedding cosine, (original, transformed) pairs vs negative pairs")
    rows = []
    for name, s in q["separation"].items():
        rows.append(
            [name, s["pairs"], s["phash_min"], fmt(s["phash_p1"], ".0f"), fmt(s["phash_median"], ".0f")]
            + [fmt(s["phash_p95"], ".0f"), s["phash_max"], fmt(s["cos_min"], ".3f"), fmt(s["cos_median"], ".3f")]
            + [fmt(s["cos_p99"], ".3f"), fmt(s["cos_max"], ".3f")]
        )
    headers = ["pairs", "n", "bits min", "p1", "median", "p95", "max", "cos min", "median", "p99", "max"]
    print_table(headers, rows)
    mismatch = {e: x["stats"]["pairs_check"] for e, x in q["eps_sweep"].items() if x["stats"]["pairs_check"]}
    if mismatch:
        print(f"  !! in-cluster pairs above the threshold differ from the library's pair count: {mismatch}")
    print(f"  quality part: {q['seconds']} s")


# ---------------------------------------------------------------------------------------------- scale: data


@dataclass(frozen=True)
class ScaleData:
    """The synthetic set's generator parameters (the data dir is named by their hash)."""

    dim: int
    eps: float
    seed: int
    rows_per_file: int
    centres: int = 1000
    intrinsic_dim: int = 32
    spread: float = 1.0
    noise: float = 0.25
    dup_fraction: float = 0.05

    def folder(self, workdir: str) -> Path:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return Path(workdir) / "scale" / f"data-{digest}"


def vectors(data: ScaleData) -> ClusteredVectors:
    """The blobs the synthetic set is drawn from."""
    return ClusteredVectors(data.dim, data.seed, data.centres, data.intrinsic_dim, data.spread, data.noise)


def synth_block(
    data: ScaleData, model: tuple[np.ndarray, np.ndarray | None], block: int
) -> tuple[np.ndarray, np.ndarray]:
    """Block ``block``'s unit vectors (seeded per block) and its planted pairs (copy row, source row, cosine)."""
    rows, start = data.rows_per_file, block * data.rows_per_file
    rng = np.random.default_rng([data.seed, 1, block])
    points = vectors(data).block(model, rows, rng)
    copies = rng.choice(rows, size=round(rows * data.dup_fraction), replace=False)
    pool = np.setdiff1d(np.arange(rows), copies)
    originals = rng.choice(pool, size=len(copies))  # with replacement: some rows get 2+ copies
    cosine = rng.uniform(1 - 0.9 * data.eps, 0.999, size=len(copies))
    base = points[originals].astype(np.float64)
    noise = rng.standard_normal(base.shape)
    noise -= np.sum(noise * base, axis=1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    points[copies] = unit(cosine[:, None] * base + np.sqrt(1 - cosine[:, None] ** 2) * noise)
    planted = np.stack([copies + start, originals + start, cosine], axis=1)
    return points, planted


def ensure_scale_data(data: ScaleData, workdir: str, rows: int) -> tuple[Path, float]:
    """Write blocks until ``rows`` rows exist (earlier blocks are reused); returns (folder, seconds spent)."""
    folder = data.folder(workdir)
    (folder / "embeddings").mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(asdict(data), indent=1))
    blocks = math.ceil(rows / data.rows_per_file)
    missing = [b for b in range(blocks) if not (folder / "embeddings" / f"shard-{b:05d}.parquet").exists()]
    if not missing:
        return folder, 0.0
    began = time.perf_counter()
    model = vectors(data).model()
    provenance = encoder_provenance(data.dim, model="synthetic-blobs", seed=data.seed, trained=True)
    for b in missing:
        points, planted = synth_block(data, model, b)
        start, m = b * data.rows_per_file, len(points)
        np.save(folder / f"planted-{b:05d}.npy", planted)
        write_shard(
            folder / "embeddings" / f"shard-{b:05d}.parquet",
            f"shard-{b:05d}",
            points,
            None,  # text column = image column
            provenance,
            sha256=[f"{i:064x}" for i in range(start, start + m)],  # distinct across the whole set
            phash=np.random.default_rng([data.seed, 2, b]).integers(0, 2**64, size=m, dtype=np.uint64),
            height=np.full(m, 64),
            similarity=np.ones(m),
            text_fields=False,
        )
        say(f"  scale data: wrote block {b + 1}/{blocks} ({(b + 1) * data.rows_per_file:,} rows)")
    return folder, time.perf_counter() - began


def rows_per_file(sizes: tuple[int, ...], cap: int = 50_000) -> int:
    """The largest divisor of gcd(sizes) up to ``cap``, so every size is a whole number of files."""
    g = math.gcd(*sizes)
    return max(d for d in range(1, min(g, cap) + 1) if g % d == 0)


def size_dir(data_folder: Path, workdir: str, n: int, per_file: int) -> Path:
    """``<workdir>/scale/run-<n>/emb/embeddings/``: symlinks to the first n / per_file blocks."""
    run = Path(workdir) / "scale" / f"run-{n}"
    emb = run / "emb" / "embeddings"
    if emb.exists():
        for link in emb.iterdir():
            link.unlink()
    emb.mkdir(parents=True, exist_ok=True)
    for b in range(n // per_file):
        (emb / f"shard-{b:05d}.parquet").symlink_to(data_folder / "embeddings" / f"shard-{b:05d}.parquet")
    return run


# ---------------------------------------------------------------------------------------------- scale: child


class _Phases:
    """Wraps library functions (in the child only) to time them; calls nested in a timed call are not counted
    again (k-means inside cluster splitting belongs to the in-cluster phase)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}  # process CPU time (all threads) inside each phase
        self.calls: dict[str, int] = {}
        self.active = 0
        self.captured: dict[str, Any] = {}

    def wrap(self, module: Any, attr: str, phase: str, outer: bool = False, capture: bool = False) -> None:
        original = getattr(module, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.active and not outer:
                return original(*args, **kwargs)
            self.active += 0 if outer else 1
            began, cpu = time.perf_counter(), time.process_time()
            try:
                result = original(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - began
                self.cpu[phase] = self.cpu.get(phase, 0.0) + time.process_time() - cpu
                self.calls[phase] = self.calls.get(phase, 0) + 1
                self.active -= 0 if outer else 1
            if capture:
                self.captured[phase] = result
            return result

        setattr(module, attr, timed)


class _RssSampler(threading.Thread):
    """Highest RssAnon (heap, arrays) and RssFile (mapped files: the vector memmap, libraries) seen, polled every
    0.1 s; VmHWM is exact but lumps both together, and file-backed pages can be dropped under memory pressure."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for name in self.peak:
                self.peak[name] = max(self.peak[name], proc_status_bytes(name) or 0)


def residual_phases(timed: dict[str, float], total: float) -> dict[str, float]:
    """The timed phases plus the untimed rest of the semantic pass (Parquet read + memmap copy) and of the call."""
    out = dict(timed)
    inner = sum(v for k, v in timed.items() if k not in ("semantic pass", "groups + outputs"))
    out["read + memmap copy"] = timed.get("semantic pass", 0.0) - inner
    out["other (columns, hash passes)"] = total - timed.get("semantic pass", 0.0) - timed.get("groups + outputs", 0.0)
    return out


def child_scale(args: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process (``run_function``): ``run_dedup`` on one size, timed per phase, its peak RSS read right
    after the call; then the pair recall against exact range search."""
    import faiss
    from faiss.contrib.exhaustive_search import range_ground_truth

    import mmembed.dedup.run as run_module
    from mmembed.dedup import DedupConfig, run_dedup, semantic
    from mmembed.index.evaluate import sample_rows
    from mmembed.index.reader import gather_rows, iter_vectors, open_embeddings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args["threads"]:
        faiss.omp_set_num_threads(args["threads"])
    phases = _Phases()
    phases.wrap(run_module, "semantic_pass", "semantic pass", outer=True)
    phases.wrap(run_module, "gather_rows", "read k-means sample")
    phases.wrap(semantic, "train_centroids", "k-means")
    phases.wrap(semantic, "assign", "assign")
    phases.wrap(semantic, "deduplicate_clusters", "in-cluster", capture=True)
    phases.wrap(semantic, "range_pairs", "library recall check")
    phases.wrap(run_module, "finish", "groups + outputs")
    rss_before = proc_status_bytes("VmRSS")
    config = DedupConfig(
        embeddings_dir=args["emb"],
        out_dir=args["out"],
        methods=tuple(args["methods"]),
        keep="first",
        eps=args["eps"],
        n_clusters=args["n_clusters"],
        recall_queries=1000,
        seed=args["seed"],
        device="cpu",
        work_dir=args["work"],
        overwrite=True,
    )
    sampler = _RssSampler()
    sampler.start()
    with measure() as call:
        summary = run_dedup(config)
    wall, cpu, peak = call.wall_s, call.cpu_s, call.peak_rss_bytes
    sampler.stop.set()
    sampler.join()
    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    secs, cpu_secs = residual_phases(phases.seconds, wall), residual_phases(phases.cpu, cpu)

    # Ground truth: exact range search over all rows for planted-row and uniform query samples.
    files = open_embeddings(args["emb"])
    n, threshold = files.count, 1.0 - args["eps"]
    planted = np.concatenate([np.load(p) for p in args["planted"]]) if args["planted"] else np.zeros((0, 3))
    planted_rows = np.unique(planted[:, :2].astype(np.int64))
    planted_rows = planted_rows[planted_rows < n]
    rng = np.random.default_rng([args["seed"], 5])
    q_planted = np.sort(rng.choice(planted_rows, size=min(args["truth_queries"], len(planted_rows)), replace=False))
    q_uniform = sample_rows(n, min(n, args["truth_queries"]), args["seed"] + 2)
    queries = np.union1d(q_planted, q_uniform)
    truth_began = time.perf_counter()
    lims, sims, ids = range_ground_truth(
        gather_rows(files, VECTORS, queries),
        (b.vectors for b in iter_vectors(files, VECTORS)),
        float(threshold),
        metric_type=faiss.METRIC_INNER_PRODUCT,
    )
    truth_s = time.perf_counter() - truth_began
    left = np.repeat(queries, np.diff(lims.astype(np.int64)))
    right = ids.astype(np.int64)
    keep = left != right
    left, right, sims = left[keep], right[keep], sims[keep]
    clusters = phases.captured["in-cluster"].clusters
    found = clusters[left] == clusters[right]

    def recall(mask: np.ndarray) -> dict[str, Any]:
        return {"pairs": int(mask.sum()), "recall": float(found[mask].mean()) if mask.any() else None}

    edges = threshold + args["eps"] * np.array([0, 0.2, 0.4, 0.6, 0.8, 1.0 + 1e-6])
    by_cosine = {
        f"({lo:.3f}, {hi:.3f}]": recall((sims > lo) & (sims <= hi))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    }
    sem = summary.get("semantic", {})
    return {
        "n": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "phases_s": secs,
        "phases_cpu_s": cpu_secs,
        "peak_rss_bytes": peak,
        "ru_maxrss_bytes": ru_maxrss,
        "peak_rss_anon_bytes": sampler.peak["RssAnon"],
        "peak_rss_file_bytes": sampler.peak["RssFile"],
        "rss_before_bytes": rss_before,
        "faiss_threads": faiss.omp_get_max_threads(),
        "semantic": sem,
        "recall_planted_queries": {"queries": len(q_planted), **recall(np.isin(left, q_planted))},
        "recall_uniform_queries": {"queries": len(q_uniform), **recall(np.isin(left, q_uniform))},
        "recall_all_queries": recall(np.ones(len(left), dtype=bool)),
        "recall_by_cosine": by_cosine,
        "truth_s": truth_s,
        "removed": summary.get("removed"),
        "groups": summary.get("groups"),
    }


# ---------------------------------------------------------------------------------------------- scale: parent


def run_child(args: dict[str, Any], log: Path, timeout: float | None) -> dict[str, Any]:
    """``child_scale`` in a fresh process (offline, passive OpenMP): its figures, or an error naming the log."""
    run = run_function("benchmarks.dedup_eval:child_scale", args, log=log, timeout=timeout, env=child_env())
    if not run.ok:
        return {"n": args["n"], "error": run.error, "log": str(log)}
    return {**run.result, "process_s": run.wall_s, "load": list(run.load), "log": str(log)}


def loglog_fit(ns: list[int], ts: list[float]) -> float | None:
    if len(ns) < 2:
        return None
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def growth(results: list[dict[str, Any]], key: Callable[[dict[str, Any]], float | None]) -> dict[str, Any]:
    done = [(r["n"], key(r)) for r in results if "error" not in r and key(r)]
    ns, ts = [n for n, _ in done], [t for _, t in done]
    exponent = loglog_fit(ns, ts)
    steps = []
    for (n0, t0), (n1, t1) in zip(done, done[1:], strict=False):
        r = n1 / n0
        steps.append(
            {
                "from": n0,
                "to": n1,
                "ratio": t1 / t0,
                "n_log_n": r * math.log(n1) / math.log(n0),
                "n_1.5": r**1.5,
                "n_2": r**2,
            }
        )
    return {"exponent": exponent, "steps": steps, "points": done}


def n_log_n_exponent(ns: list[int]) -> float | None:
    return loglog_fit(ns, [n * math.log(n) for n in ns]) if len(ns) >= 2 else None


def run_scale(cfg: EvalConfig) -> dict[str, Any]:
    sizes = tuple(sorted(cfg.sizes))
    data = ScaleData(dim=cfg.dim, eps=cfg.eps, seed=cfg.seed, rows_per_file=rows_per_file(sizes))
    say(f"scale: data {data} for sizes {sizes}")
    folder, gen_s = ensure_scale_data(data, cfg.workdir, max(sizes))
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {"data": asdict(data), "data_dir": str(folder), "generate_s": gen_s, "results": results}
    for n in sizes:
        run = size_dir(folder, cfg.workdir, n, data.rows_per_file)
        blocks = n // data.rows_per_file
        args = {
            "n": n,
            "emb": str(run / "emb"),
            "out": str(run / "out"),
            "work": str(run),
            "eps": cfg.eps,
            "seed": cfg.seed,
            "threads": cfg.threads,
            "methods": list(cfg.scale_methods),
            "n_clusters": cfg.n_clusters,
            "truth_queries": cfg.truth_queries,
            "planted": [str(folder / f"planted-{b:05d}.npy") for b in range(blocks)],
        }
        say(f"scale: n={n:,} (run_dedup in a child process; log {run / 'child.log'})")
        result = run_child(args, run / "child.log", cfg.timeout)
        results.append(result)
        (Path(cfg.workdir) / "scale" / "results.json").write_text(json.dumps(report, indent=1, default=float))
        if "error" in result:
            say(f"scale: n={n:,}: {result['error']}")
            break  # larger sizes would take longer still
        say(
            f"scale: n={n:,}: {result['wall_s']:.1f} s wall, {result['cpu_s']:.1f} s CPU, peak RSS "
            f"{result['peak_rss_bytes'] / GIB:.2f} GiB, pair recall (planted queries) "
            f"{fmt(result['recall_planted_queries']['recall'], '.4f')}"
        )
    report["growth_wall"] = growth(results, lambda r: r["wall_s"])
    report["growth_cpu"] = growth(results, lambda r: r["cpu_s"])
    phase_names = sorted({p for r in results if "error" not in r for p in r["phases_s"]})
    report["growth_phases"] = {p: growth(results, lambda r, p=p: r["phases_s"].get(p)) for p in phase_names}
    report["growth_phases_cpu"] = {p: growth(results, lambda r, p=p: r["phases_cpu_s"].get(p)) for p in phase_names}
    finished = [r["n"] for r in results if "error" not in r]
    report["n_log_n_exponent"] = n_log_n_exponent(finished)
    report["unfinished"] = [n for n in sizes if n not in finished]
    fit = report["growth_wall"]
    if report["unfinished"] and fit["exponent"] and finished:
        n_last, t_last = fit["points"][-1]
        report["extrapolated_wall_s"] = {n: t_last * (n / n_last) ** fit["exponent"] for n in report["unfinished"]}
    return report


def print_scale(s: dict[str, Any], cfg: EvalConfig) -> None:
    d = s["data"]
    print("\n== Scale: semantic dedup (run_dedup end to end on Parquet) ==")
    print(
        f"  data: {d['dim']}-d unit vectors, {d['centres']} blobs (spread in {d['intrinsic_dim']}-d subspaces), "
        f"{d['dup_fraction']:.0%} rows planted as near-copies at cosine U[{1 - 0.9 * d['eps']:.3f}, 0.999]; "
        f"{d['rows_per_file']:,} rows per file; eps {d['eps']:g} (cosine > {1 - d['eps']:g}); generated in "
        f"{s['generate_s']:.0f} s (0 = reused) under {s['data_dir']}"
    )
    print(
        f"  {machine_line()}; OMP_WAIT_POLICY=PASSIVE, faiss threads {cfg.threads or 'default'}; "
        "load average before/after each run in the last column"
    )
    rows = []
    for r in s["results"]:
        if "error" in r:
            rows.append([f"{r['n']:,}", r["error"]] + [""] * 12)
            continue
        sem = r["semantic"]
        rows.append(
            [f"{r['n']:,}", f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}", f"{r['peak_rss_bytes'] / GIB:.2f}"]
            + [f"{r['peak_rss_anon_bytes'] / GIB:.2f}", f"{r['peak_rss_file_bytes'] / GIB:.2f}"]
            + [f"{r['ru_maxrss_bytes'] / GIB:.2f}", sem.get("clusters"), sem.get("final_clusters")]
            + [sem.get("largest_cluster"), fmt(sem.get("pair_recall"), ".4f")]
            + [f"{fmt(r['recall_planted_queries']['recall'], '.4f')} ({r['recall_planted_queries']['pairs']})"]
            + [f"{fmt(r['recall_uniform_queries']['recall'], '.4f')} ({r['recall_uniform_queries']['pairs']})"]
            + [f"{r['load'][0]}/{r['load'][1]}"]
        )
    headers = ["n", "wall s", "CPU s", "peak GiB", "anon", "file", "ru_max GiB", "k", "final k", "largest"]
    headers += ["lib recall", "recall planted q (pairs)", "recall uniform q (pairs)", "load"]
    print_table(headers, rows)

    done = [r for r in s["results"] if "error" not in r]
    if done:
        print("\n  Time per phase, wall s / CPU s (all threads); the semantic pass is the sum of the six rows above it")
        rows = [
            [p] + [f"{r['phases_s'].get(p, 0):.1f} / {r['phases_cpu_s'].get(p, 0):.1f}" for r in done] for p in PHASES
        ]
        rows += [["= run_dedup"] + [f"{r['wall_s']:.1f} / {r['cpu_s']:.1f}" for r in done]]
        rows += [["exact truth (benchmark, not in run_dedup)"] + [f"{r['truth_s']:.1f} / -" for r in done]]
        print_table(["phase", *[f"{r['n']:,}" for r in done]], rows)
        print("\n  Pair recall by true-pair cosine (all truth queries)")
        buckets = list(done[-1]["recall_by_cosine"])
        rows = []
        for b in buckets:
            cells = []
            for r in done:
                v = r["recall_by_cosine"][b]
                cells.append(f"{fmt(v['recall'], '.4f')} ({v['pairs']})")
            rows.append([b, *cells])
        print_table(["cosine", *[f"{r['n']:,}" for r in done]], rows)

    print("\n  Growth (time ratio between consecutive sizes vs model predictions)")
    rows = []
    for label, key in (("wall", "growth_wall"), ("CPU", "growth_cpu")):
        for step in s[key]["steps"]:
            rows.append(
                [f"{label} {step['from']:,} -> {step['to']:,}", f"{step['ratio']:.2f}", f"{step['n_log_n']:.2f}"]
                + [f"{step['n_1.5']:.2f}", f"{step['n_2']:.2f}"]
            )
    print_table(["step", "measured", "n log n", "n^1.5", "n^2"], rows)
    nln = s["n_log_n_exponent"]
    print(
        f"  log-log fit time ~ n^b: wall b = {fmt(s['growth_wall']['exponent'], '.3f')}, CPU b = "
        f"{fmt(s['growth_cpu']['exponent'], '.3f')} (n log n over these sizes: b = {fmt(nln, '.3f')}; n^2: b = 2)"
    )
    for label, key in (("wall", "growth_phases"), ("CPU", "growth_phases_cpu")):
        per_phase = ", ".join(
            f"{p} {fmt(s[key][p]['exponent'], '.2f')}" for p in PHASES if s[key].get(p, {}).get("exponent") is not None
        )
        print(f"  per phase b ({label}): {per_phase}")
    for n, t in (s.get("extrapolated_wall_s") or {}).items():
        print(f"  extrapolated (did not finish): n={n:,}: ~{t:.0f} s wall")


PHASES = (
    "read k-means sample",
    "k-means",
    "read + memmap copy",
    "assign",
    "in-cluster",
    "library recall check",
    "semantic pass",
    "groups + outputs",
    "other (columns, hash passes)",
)


def scale_targets(s: dict[str, Any]) -> dict[str, Any]:
    done = [r for r in s["results"] if "error" not in r]
    recalls = [r["recall_planted_queries"]["recall"] for r in done]
    b, nln = s["growth_wall"]["exponent"], s["n_log_n_exponent"]
    return {
        "pair_recall_>=_0.99": all(v is not None and v >= RECALL_TARGET for v in recalls) if recalls else None,
        "growth_close_to_n_log_n (b <= n log n's b + 0.15)": (b <= nln + 0.15) if b is not None and nln else None,
        "largest_size_finished": max((r["n"] for r in done), default=None),
    }


# ---------------------------------------------------------------------------------------------- main


@dataclass
class EvalConfig:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    dim: int = 512
    eps: float = DEFAULT_EPS
    seed: int = 0
    variants: int = 2
    model: str = "mmembed-tiny"
    checkpoint: str | None = None
    pretrained: str | None = None
    threads: int = 0
    n_clusters: int | None = None
    scale_methods: tuple[str, ...] = ("semantic",)
    truth_queries: int = 2000
    timeout: float | None = None
    skip_scale: bool = False
    skip_quality: bool = False
    json: bool = False
    workdir: str = DEFAULT_WORKDIR


def parse_args(argv: list[str]) -> EvalConfig:
    d = EvalConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(str(s) for s in d.sizes), help="comma-separated row counts")
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--eps", type=float, default=d.eps, help="semantic duplicates have cosine > 1 - eps")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--variants", type=int, default=d.variants, help="near-duplicates per transform and photo")
    p.add_argument("--model", default=d.model, help="open_clip model name for the quality embeddings")
    p.add_argument("--checkpoint", help="local open_clip checkpoint (state dict) for --model")
    p.add_argument("--pretrained", help="open_clip pretrained tag (needs a warm cache offline)")
    p.add_argument("--threads", type=int, default=d.threads, help="faiss threads in the scale runs (0: default)")
    p.add_argument("--n-clusters", type=int, help="k-means clusters of the scale runs (default: the library's)")
    p.add_argument("--scale-methods", default="semantic", help="methods of the scale runs (comma-separated)")
    p.add_argument("--truth-queries", type=int, default=d.truth_queries, help="query rows per recall sample")
    p.add_argument("--timeout", type=float, help="seconds before one scale size is given up")
    p.add_argument("--skip-scale", action="store_true")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--workdir", default=d.workdir, help="generated data and run outputs (data reused across runs)")
    p.add_argument("--json", action="store_true", help="also print the whole report as JSON")
    a = p.parse_args(argv)
    sizes = tuple(int(s.replace("_", "")) for s in a.sizes.split(",") if s.strip())
    methods = tuple(m.strip() for m in a.scale_methods.split(",") if m.strip())
    values = {k: v for k, v in vars(a).items() if v is not None and k not in ("sizes", "scale_methods")}
    return EvalConfig(**values, sizes=sizes, scale_methods=methods)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    passive_openmp(__file__, argv)
    cfg = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"config": asdict(cfg)}
    if not cfg.skip_quality:
        report["quality"] = run_quality(cfg)
    if not cfg.skip_scale:
        report["scale"] = run_scale(cfg)
        report["scale"]["targets"] = scale_targets(report["scale"])
    print(f"\nmmembed dedup evaluation (seed {cfg.seed}, eps {cfg.eps:g}, workdir {cfg.workdir})")
    if "quality" in report:
        print_quality(report["quality"], cfg.eps)
    if "scale" in report:
        print_scale(report["scale"], cfg)
        verdicts = {
            k: v if not isinstance(v, bool) else ("met" if v else "NOT met")
            for k, v in report["scale"]["targets"].items()
        }
        print("  targets: " + "; ".join(f"{k}: {v}" for k, v in verdicts.items()))
    (Path(cfg.workdir) / "report.json").write_text(json.dumps(report, indent=1, default=float))
    if cfg.json:
        print(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
