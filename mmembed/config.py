"""Frozen dataclass configs for every stage, so options travel as one value, not as loose kwargs; each field
declares its command-line option too (``mmembed.options``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmembed.options import ConfigError, config_from_dict, option

# The default model is a real pretrained one, as in the tools users come from; random weights only on request.
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
LOCAL_DIR_PREFIX = "local-dir:"
RANDOM_INIT_WEIGHTS = "random-init"  # the provenance's "weights" of a model with random weights
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OUTPUT_DTYPES = ("float32", "float16")

MAX_K = 10_000  # the most hits one search may ask for (CLI, Python API, HTTP)
TARGETS = ("image", "text")  # what a search returns: images (the image index) or captions (the text index)
SEARCH_MODES = ("vector", "keyword", "hybrid")  # how a text query ranks (mmembed.search)
DEFAULT_TEXT_WEIGHT = 0.3  # share of the text in a composed image + text query (Python API, CLI, HTTP)


@dataclass(frozen=True)
class EncoderConfig:
    """Which OpenCLIP model to run and how.

    model: an open_clip model name (``ViT-B-32``), a name registered from ``mmembed/encoders/configs``
    (``mmembed-tiny``), or ``local-dir:/path`` holding ``open_clip_config.json`` and weights.
    pretrained: an open_clip pretrained tag (needs a download or a warm cache); the default model alone
    means its default tag (``ViT-B-32`` -> ``laion2b_s34b_b79k``).
    checkpoint: a local checkpoint file (state dict) for ``model``.
    random_init: random weights initialised from ``seed``, for smoke tests and training from scratch;
    without it a model needs weights, so random vectors are never made by accident.
    """

    model: str = option(
        DEFAULT_MODEL,
        help="open_clip model name (ViT-B-32), a bundled one (mmembed-tiny) or local-dir:/path; with a --checkpoint "
        "written by `mmembed train` and no --model, the model it was trained as",
    )
    pretrained: str | None = option(
        None,
        exclusive="weights",
        help=f"open_clip pretrained tag, e.g. {DEFAULT_PRETRAINED} (needs a download or a warm cache; the default "
        f"model alone means {DEFAULT_PRETRAINED})",
    )
    checkpoint: str | None = option(
        None, exclusive="weights", help="checkpoint file of --model (.pt/.bin/.safetensors; path or s3:// gs:// URL)"
    )
    device: str = option("auto", choices=DEVICES, help="where the model runs (cuda without CUDA fails at once)")
    precision: str = option("auto", choices=PRECISIONS, help="autocast dtype (auto: bf16/fp16 on GPU)")
    batch_size: int = option(64, aliases=("--batch_size",), help="samples per model call")
    seed: int = option(0, help="seed of random weights (--random-init)")
    torch_threads: int | None = option(
        None,
        help="CPU threads for torch (default: on the local embed runner the cores the decode threads leave, "
        "at least 1; else torch's own)",
    )
    random_init: bool = option(
        False,
        exclusive="weights",
        help="random weights from --seed: smoke tests and training from scratch (their vectors mean nothing); "
        "recorded in the provenance",
    )

    @staticmethod
    def fill_unset(values: dict[str, Any]) -> dict[str, Any]:
        """Given values with ``model`` filled in when only ``checkpoint`` is given and names one: a checkpoint
        written by ``mmembed train`` records the model it was trained as (reading it needs torch)."""
        if "model" in values or not values.get("checkpoint"):
            return values
        from mmembed.encoders.openclip import model_of_checkpoint

        model = model_of_checkpoint(values["checkpoint"])
        return {**values, "model": model} if model else values

    def __post_init__(self) -> None:
        if self.pretrained and self.checkpoint:
            raise ConfigError("give either --pretrained TAG or --checkpoint FILE, not both")
        has_weights = bool(self.pretrained or self.checkpoint or self.model.startswith(LOCAL_DIR_PREFIX))
        if self.random_init and has_weights:
            raise ConfigError(
                "--random-init asks for random weights, but --pretrained, --checkpoint or a local-dir model give "
                "weights; drop one of them"
            )
        if not self.random_init and not has_weights:
            if self.model != DEFAULT_MODEL:
                raise ConfigError(
                    f"model {self.model!r} has no weights: pass --pretrained TAG, --checkpoint FILE or --model "
                    "local-dir:DIR; or --random-init for random weights (smoke tests only: their vectors mean nothing)"
                )
            object.__setattr__(self, "pretrained", DEFAULT_PRETRAINED)
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {DEVICES}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ConfigError(f"torch threads must be >= 1, got {self.torch_threads}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")
        if self.checkpoint and "://" not in self.checkpoint and not Path(self.checkpoint).is_file():
            raise ConfigError(
                f"checkpoint {self.checkpoint!r} is not a file; pass the path (or s3:// / gs:// URL) of an "
                "open_clip checkpoint (.pt/.bin/.safetensors)"
            )


# What a sample's caption is to the embed job: "required" (a sample without one is a no_caption error),
# "optional" (a sample without one is embedded image-only), "none" (captions are not read; no text tower).
CAPTION_MODES = ("required", "optional", "none")
# Where JPEGs are decoded: "cpu" (Pillow on the reader threads) or "gpu" (in batches on the model's device, with
# the resize/crop and perceptual hash there too; other images and JPEGs the device refuses go the CPU way).
DECODERS = ("cpu", "gpu")


@dataclass(frozen=True)
class DecodeConfig:
    """How tar members become a sample: which extensions hold the image, caption and metadata."""

    image_extensions: tuple[str, ...] = option(
        ("jpg", "jpeg", "png", "webp"),
        aliases=("--wds_image_key",),
        metavar="EXT",
        help="tar member extensions that hold the image, the first present wins",
    )
    caption_key: str = option("txt", aliases=("--wds_caption_key",), help="tar member extension of the caption")
    captions: str = option(
        "required",
        choices=CAPTION_MODES,
        help="required: a sample without a caption is a no_caption error; optional: embed it image-only (null "
        "caption, text embedding and similarity); none: ignore captions, run the image tower only",
    )
    metadata_key: str = option("json", help="tar member extension of the json metadata")
    max_image_pixels: int = option(89_478_485, help="larger images are errors (Pillow's decompression-bomb limit)")
    threads: int = option(
        factory=lambda: min(4, os.cpu_count() or 1),
        flag="--decode-threads",
        aliases=("--num_prepro_workers",),
        help="decode/resize threads per worker (default: min(4, cores))",
    )
    # sha256 and perceptual hash of each image: the embed job stores them; training needs neither
    fingerprints: bool = option(True, cli=False)
    exact_decode: bool = option(
        False,
        help="decode every JPEG in full; by default one at least twice the model's input size is decoded at "
        "reduced scale first (several times faster; cosine to the exact vectors is reported in the README)",
    )
    decoder: str = option(
        "cpu",
        flag="--decode",
        choices=DECODERS,
        help="cpu: every image is decoded and resized on the CPU workers; gpu: JPEGs travel as bytes and are "
        "decoded in batches on the model's device (nvJPEG; torchvision's CPU decoder with --device cpu), resized, "
        "cropped and perceptually hashed there; other images, and JPEGs the device decoder refuses, are decoded on "
        "CPU (counted as gpu_decode.cpu_fallback.* in the summary's beam_counters)",
    )

    def __post_init__(self) -> None:
        if self.max_image_pixels < 1:
            raise ConfigError(f"max image pixels must be >= 1, got {self.max_image_pixels}")
        if self.threads < 1:
            raise ConfigError(f"decode threads must be >= 1, got {self.threads}")
        if not self.image_extensions:
            raise ConfigError("image_extensions must name at least one extension")
        if self.captions not in CAPTION_MODES:
            raise ConfigError(f"captions must be one of {', '.join(CAPTION_MODES)}, got {self.captions!r}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")


def default_cpu_inference_threads(decode_threads: int) -> int:
    """Torch threads for CPU inference beside ``decode_threads`` decode threads: the cores they leave, at least 1.

    Torch's own default (every core) makes the model's threads fight the decode threads; on a 2-core
    machine one inference thread embeds about twice as fast as two (benchmarks/embed_throughput.py).
    """
    return max(1, (os.cpu_count() or 1) - decode_threads)


@dataclass(frozen=True)
class EmbedJobConfig:
    """Everything the embed job needs: inputs, outputs and the two stage configs."""

    shards: tuple[str, ...] = option(
        aliases=("--input_dataset",),
        metavar="SHARD",
        help="input shards: paths, globs or {00000..00099} patterns; local, gs:// or s3://",
    )
    out: str = option(aliases=("--output_folder",), help="output dir: embeddings/, errors/, summary.json")
    encoder: EncoderConfig = option(factory=EncoderConfig, help="model")
    decode: DecodeConfig = option(factory=DecodeConfig, help="decoding")
    output_dtype: str = option("float32", choices=OUTPUT_DTYPES, help="dtype of the stored vectors")
    overwrite: bool = option(False, help="redo shards whose outputs already exist")

    def __post_init__(self) -> None:
        if not self.shards:
            raise ConfigError("no input shards given; pass --shards 'data/shards/*.tar'")
        if self.output_dtype not in OUTPUT_DTYPES:
            raise ConfigError(f"output dtype {self.output_dtype!r} is not one of {OUTPUT_DTYPES}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedJobConfig:
        """Build from a plain mapping (a parsed YAML job file); unknown keys are an error."""
        return config_from_dict(cls, data, "embed")

    @classmethod
    def from_yaml(cls, path: str | Path) -> EmbedJobConfig:
        """Read a YAML job file (see ``jobs/``)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f) or {})


LABELLED_SETS = ("digits", "fashion-mnist")  # what make-shards --dataset reads (mmembed.labelled)


@dataclass(frozen=True)
class MakeShardsConfig:
    """make-shards: one source (a folder, a manifest or a labelled set an installed package ships) written as
    WebDataset shards ``<out>/<prefix>-<pattern % n>``."""

    out: str = option(aliases=("--output_folder",), help="folder the shards are written to")
    images: str | None = option(
        None, exclusive="source", help="folder of images with sidecar <name>.txt captions (and <name>.json)"
    )
    manifest: str | None = option(
        None, exclusive="source", help="CSV or Parquet manifest: image path, caption, extra columns"
    )
    dataset: str | None = option(
        None,
        exclusive="source",
        choices=LABELLED_SETS,
        help="a labelled set an installed package ships (scikit-learn digits; Debian dataset-fashion-mnist), "
        "captioned from its class names",
    )
    split: str = option("train", choices=("train", "test"), help="with --dataset")
    limit: int | None = option(None, help="with --dataset: at most this many samples")
    image_column: str = option("image", help="manifest column of the image paths")
    caption_column: str = option("caption", aliases=("--caption_col",), help="manifest column of the captions")
    image_root: str | None = option(None, help="folder that relative manifest image paths are under")
    key_column: str | None = option(None, help="manifest column holding unique sample keys (default: row numbers)")
    samples_per_shard: int = option(1000, aliases=("--number_sample_per_shard",), help="samples per shard")
    pattern: str = option("%05d.tar", help="shard file name pattern, after the prefix")
    prefix: str | None = option(
        None,
        help="shard name prefix (default: the input folder's or manifest's name, or DATASET-SPLIT), so shards of "
        "several sources can share --out; '' for none",
    )
    overwrite: bool = option(False, help="replace shards of the same names in --out")

    def __post_init__(self) -> None:
        if sum(source is not None for source in (self.images, self.manifest, self.dataset)) != 1:
            raise ConfigError("give one input: --images DIR, --manifest FILE or --dataset NAME")
        if self.samples_per_shard < 1:
            raise ConfigError(f"samples per shard must be >= 1, got {self.samples_per_shard}")
