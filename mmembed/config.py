"""Frozen dataclass configs for every stage, so options travel as one value, not as loose kwargs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

# The default model is a real pretrained one, as in the tools users come from; random weights only on request.
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
LOCAL_DIR_PREFIX = "local-dir:"
RANDOM_INIT_WEIGHTS = "random-init"  # the provenance's "weights" of a model with random weights
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
OUTPUT_DTYPES = ("float32", "float16")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


MAX_K = 10_000  # the most hits one search may ask for (CLI, Python API, HTTP)
TARGETS = ("image", "text")  # what a search returns: images (the image index) or captions (the text index)


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

    model: str = DEFAULT_MODEL
    pretrained: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 64
    seed: int = 0
    torch_threads: int | None = None  # CPU inference threads; None keeps torch's default
    random_init: bool = False

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

    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
    caption_key: str = "txt"
    captions: str = "required"  # one of CAPTION_MODES
    metadata_key: str = "json"
    max_image_pixels: int = 89_478_485  # Pillow's own decompression-bomb limit
    threads: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # decode/resize threads per worker
    # sha256 and perceptual hash of each image: the embed job stores them; training needs neither
    fingerprints: bool = True
    # False: a JPEG at least twice the model's input size is decoded at reduced scale (Image.draft) before the
    # exact resize; True: every image is decoded in full (slower; the vectors differ slightly, see README)
    exact_decode: bool = False
    # one of DECODERS: "gpu" leaves JPEGs encoded for the model's device (mmembed.gpudecode); "cpu" decodes all here
    decoder: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_image_pixels < 1:
            raise ConfigError("max_image_pixels must be >= 1")
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

    shards: tuple[str, ...]
    out: str
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    output_dtype: str = "float32"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.shards:
            raise ConfigError("no input shards given; pass --shards 'data/shards/*.tar'")
        if self.output_dtype not in OUTPUT_DTYPES:
            raise ConfigError(f"output dtype {self.output_dtype!r} is not one of {OUTPUT_DTYPES}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbedJobConfig:
        """Build from a plain mapping (a parsed YAML job file); unknown keys are an error."""
        data = dict(data)
        encoder = _build(EncoderConfig, data.pop("encoder", {}) or {}, "encoder")
        decode_data = dict(data.pop("decode", {}) or {})
        if "image_extensions" in decode_data:
            decode_data["image_extensions"] = tuple(decode_data["image_extensions"])
        decode = _build(DecodeConfig, decode_data, "decode")
        shards = data.pop("shards", ())
        shards = (shards,) if isinstance(shards, str) else tuple(shards)
        return _build(cls, {**data, "shards": shards, "encoder": encoder, "decode": decode}, "job")

    @classmethod
    def from_yaml(cls, path: str | Path) -> EmbedJobConfig:
        """Read a YAML job file (see ``jobs/``)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(yaml.safe_load(f) or {})


def _build(cls: type, data: dict[str, Any], section: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {section} config; known keys: {sorted(known)}")
    return cls(**data)
