"""OpenCLIP models: resolve a model spec, load it on a device, and embed images and captions.

Everything here is plain torch/numpy, so the Beam model handler, the search CLI and the
benchmarks share one loading and embedding path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
from collections.abc import Iterator
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.transform import MaybeToTensor, PreprocessCfg, image_transform_v2, merge_preprocess_dict
from open_clip.utils import to_2tuple
from PIL import Image

from mmembed import storage
from mmembed.config import LOCAL_DIR_PREFIX, RANDOM_INIT_WEIGHTS, ConfigError, EncoderConfig
from mmembed.encoders.provenance_cache import BUNDLED_CONFIG_DIR

log = logging.getLogger(__name__)

CHECKPOINT_META_KEY = "mmembed"  # the entry of a checkpoint that ``mmembed train`` fills


@cache
def register_bundled_configs() -> None:
    """Make the small configs shipped with mmembed (e.g. ``mmembed-tiny``) known to open_clip by name."""
    open_clip.add_model_config(BUNDLED_CONFIG_DIR)


def _local_dir_config(model: str) -> dict[str, Any]:
    path = Path(model[len(LOCAL_DIR_PREFIX) :]) / "open_clip_config.json"
    if not path.is_file():
        raise ConfigError(f"model {model!r}: {path} not found; a local model dir needs open_clip_config.json")
    return json.loads(path.read_text(encoding="utf-8"))


def model_config(config: EncoderConfig) -> dict[str, Any]:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) without building the model."""
    if config.model.startswith(LOCAL_DIR_PREFIX):
        return _local_dir_config(config.model)["model_cfg"]
    register_bundled_configs()
    found = open_clip.get_model_config(config.model)
    if found is None:
        raise ConfigError(
            f"unknown model {config.model!r}; use an open_clip name (python -c 'import open_clip; "
            "print(open_clip.list_models())'), "
            "a bundled one such as mmembed-tiny, or local-dir:/path/with/open_clip_config.json"
        )
    return found


def embedding_dim(config: EncoderConfig) -> int:
    return int(model_config(config)["embed_dim"])


def pretrained_cfg(config: EncoderConfig) -> dict[str, Any]:
    """open_clip's entry for the config's pretrained tag (download location, preprocessing); an unknown tag
    is a ConfigError naming the model's known tags."""
    found = open_clip.get_pretrained_cfg(config.model, config.pretrained)
    if not found:
        tags = open_clip.list_pretrained_tags_by_model(config.model)
        raise ConfigError(f"model {config.model!r} has no pretrained tag {config.pretrained!r}; known tags: {tags}")
    return found


def resolve_preprocess_cfg(config: EncoderConfig) -> dict[str, Any]:
    """The image preprocessing open_clip will use for this model, resolved without loading weights.

    Mirrors ``open_clip.create_model``: defaults, then the pretrained tag's or local dir's settings,
    then the vision tower's image size. ``OpenClipEncoder.load`` checks the loaded model agrees.
    """
    cfg = asdict(PreprocessCfg())
    if config.model.startswith(LOCAL_DIR_PREFIX):
        cfg = merge_preprocess_dict(cfg, _local_dir_config(config.model).get("preprocess_cfg", {}))
    elif config.pretrained:
        cfg = merge_preprocess_dict(cfg, pretrained_cfg(config))
    cfg["size"] = list(to_2tuple(model_config(config)["vision_cfg"].get("image_size", cfg["size"])))
    return _normalise_cfg(cfg)


def _normalise_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """JSON-friendly form (tuples -> lists) so configs compare equal after a round trip."""
    return json.loads(json.dumps(cfg))


class ImagePreprocessor:
    """open_clip's eval transform split in two: geometry on CPU workers, normalisation on the device.

    ``to_pixels`` runs the resize / crop part and returns compact uint8 HxWx3 arrays; ``normalise``
    does open_clip's ToTensor + Normalize on a batch. Together they equal open_clip's transform.
    """

    def __init__(self, preprocess_cfg: dict[str, Any]) -> None:
        self.cfg = preprocess_cfg
        transform = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
        steps = list(transform.transforms)
        cut = next(i for i, step in enumerate(steps) if isinstance(step, MaybeToTensor))
        self.geometry = steps[:cut]
        self.mean = tuple(float(v) for v in steps[-1].mean)
        self.std = tuple(float(v) for v in steps[-1].std)

    @property
    def input_side(self) -> int:
        """The longer side of the model's input (e.g. 224): what a reduced-scale decode must not go below."""
        size = self.cfg["size"]
        return int(max(size) if isinstance(size, list | tuple) else size)

    def to_pixels(self, image: Image.Image) -> np.ndarray:
        for step in self.geometry:
            image = step(image)
        return np.array(image, dtype=np.uint8)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 -> normalised float N x 3 x H x W, on the tensor's device."""
        x = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)


class CaptionTokenizer:
    """The model's own open_clip tokenizer, returning int64 numpy token arrays."""

    def __init__(self, config: EncoderConfig) -> None:
        register_bundled_configs()
        self.tokenizer = open_clip.get_tokenizer(config.model)

    def __call__(self, captions: list[str]) -> np.ndarray:
        return self.tokenizer(captions).numpy().astype(np.int64)


def resolve_device(requested: str) -> str:
    """'auto' -> cuda when present else cpu; 'cuda' without CUDA is an error, never a silent CPU run."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda was requested but CUDA is not available (torch "
            f"{torch.__version__}, cuda build {torch.version.cuda}); fix: run on a GPU machine, or pass --device cpu"
        )
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    """The autocast dtype for a precision setting; None means plain fp32."""
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def file_sha256(path: str) -> str:
    """sha256 of a file (local or remote), cached per (path, size, mtime) so a rewritten file is hashed again."""
    found = storage.info(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no such file")
    return _file_sha256(path, found.size, found.mtime)


@cache
def _file_sha256(path: str, size: int, mtime: float | None) -> str:
    digest = hashlib.sha256()
    with storage.open_read(path) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_dir_sha256(model: str) -> str:
    """One digest over a local model dir's config and weight files, so retrained weights change provenance."""
    folder = Path(model[len(LOCAL_DIR_PREFIX) :])
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*")):
        if path.suffix in (".json", ".safetensors", ".bin", ".pth", ".pt"):
            digest.update(path.name.encode() + file_sha256(str(path)).encode())
    return digest.hexdigest()


def checkpoint_meta(path: str | Path) -> dict[str, Any] | None:
    """The metadata ``mmembed train`` stores in its checkpoints, or None for a plain open_clip state dict.

    Cached per (path, size, mtime) like the file's sha256: the embed command, the job's provenance and
    each query-encoder check ask for it, and a legacy (non-zip) checkpoint is read whole to answer.
    """
    local = storage.cached_copy(str(path))
    stat = Path(local).stat()
    return _checkpoint_meta(local, stat.st_size, stat.st_mtime_ns)


@cache
def _checkpoint_meta(path: str, size: int, mtime_ns: int) -> dict[str, Any] | None:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # not a zip file: no mmap
    meta = checkpoint.get(CHECKPOINT_META_KEY) if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else None


def model_of_checkpoint(path: str | None) -> str | None:
    """The model name a ``mmembed train`` checkpoint was trained as (None for other files or no file)."""
    if not path or not storage.exists(path):
        return None
    meta = checkpoint_meta(path)
    return meta.get("model") if meta else None


def trained_checkpoint_info(config: EncoderConfig) -> dict[str, Any] | None:
    """For a checkpoint written by ``mmembed train``: how it was trained; refuses it under another model name."""
    meta = checkpoint_meta(config.checkpoint)
    if meta is None:
        return None
    if meta.get("model") != config.model:
        raise ConfigError(
            f"checkpoint {config.checkpoint} was trained as model {meta.get('model')!r}, not {config.model!r}; "
            f"fix: pass --model {meta.get('model')}"
        )
    train = meta.get("train", {})
    return {
        "init_weights": meta.get("init_weights"),
        "steps": meta.get("step"),
        "epochs": meta.get("epoch"),
        "samples_per_epoch": meta.get("samples_per_epoch"),
        "batch_size": train.get("batch_size"),
        "train_shards": len(train.get("shards", [])),
    }


def _absolute(path: str) -> str:
    """A local path made absolute (so it means the same file from any folder); a URL as it is."""
    return str(Path(path).resolve()) if storage.is_local(path) else path


def provenance(config: EncoderConfig) -> dict[str, Any]:
    """What produced an embedding: enough to refuse mixing models and to reload the same encoder."""
    weights = RANDOM_INIT_WEIGHTS
    if config.pretrained:
        weights = f"pretrained:{config.pretrained}"
    elif config.checkpoint:
        weights = f"checkpoint-sha256:{file_sha256(config.checkpoint)}"
    elif config.model.startswith(LOCAL_DIR_PREFIX):
        weights = f"local-dir-sha256:{local_dir_sha256(config.model)}"
    return {
        "model": config.model,
        "pretrained": config.pretrained,
        # absolute, so search and serve find the file from any working directory
        "checkpoint": _absolute(config.checkpoint) if config.checkpoint else None,
        "checkpoint_sha256": file_sha256(config.checkpoint) if config.checkpoint else None,
        "trained": trained_checkpoint_info(config) if config.checkpoint else None,
        "weights": weights,
        "init_seed": config.seed if weights == RANDOM_INIT_WEIGHTS else None,
        "dim": embedding_dim(config),
        "preprocessing": resolve_preprocess_cfg(config),
    }


def ensure_weights(config: EncoderConfig) -> None:
    """Fetch a pretrained tag's weights into the local cache now (a no-op when cached), so a job that cannot
    get them stops before it creates anything, with the ways forward instead of a traceback."""
    if not config.pretrained:
        return
    register_bundled_configs()
    cfg = pretrained_cfg(config)
    try:
        found = open_clip.pretrained.download_pretrained(cfg)
    except Exception as exc:  # noqa: BLE001 - offline, no cache, hub errors: all mean the same to the user
        found, cause = "", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    else:
        cause = "no download location"
    if not found:
        raise ConfigError(
            f"the weights of {config.model} ({config.pretrained}) are not in the local cache and could not be "
            f"downloaded ({cause}).\nWays forward:\n"
            "  --checkpoint FILE       a local open_clip checkpoint (state dict) for --model\n"
            "  --model local-dir:DIR   a folder holding open_clip_config.json and the weights\n"
            "  --random-init           random weights, for smoke tests only (their vectors mean nothing)"
        )


def create_model(config: EncoderConfig, device: str) -> torch.nn.Module:
    """The open_clip model for ``config`` on ``device``: tag, checkpoint file, local dir or seeded random init.

    Shared by embedding (then put in eval mode) and training (the starting weights).
    """
    register_bundled_configs()
    torch.manual_seed(config.seed)  # random-init models are reproducible across workers
    weights = config.pretrained or config.checkpoint
    try:
        local = storage.cached_copy(config.checkpoint) if config.checkpoint else config.pretrained
        with _without_random_init_notice():
            model = open_clip.create_model(config.model, pretrained=local, device=device)
    except (RuntimeError, OSError, ValueError) as exc:
        raise RuntimeError(
            f"model {config.model} ({weights or 'random init'}): weights could not be loaded ({exc}); fix: on a "
            "machine without a model hub, pass --checkpoint FILE (a local open_clip state dict) or "
            "--model local-dir:/path holding open_clip_config.json and the weights"
        ) from exc
    expected = resolve_preprocess_cfg(config)
    actual = _normalise_cfg(open_clip.get_model_preprocess_cfg(model))
    if actual != expected:
        raise RuntimeError(f"model {config.model}: preprocessing {actual} differs from the resolved {expected}")
    log.info("loaded %s (%s) on %s", config.model, weights or "random init", device)
    return model


class _RandomInitNotice(logging.Filter):
    """open_clip's root-logger warning for a model built without weights: random weights are only ever asked
    for (--random-init), and mmembed says once itself what they mean (``schema.warn_if_random_weights``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _without_random_init_notice() -> Iterator[None]:
    notice = _RandomInitNotice()
    logging.getLogger().addFilter(notice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(notice)


class OpenClipEncoder:
    """A loaded OpenCLIP model that embeds uint8 pixels and token ids into L2-normalised vectors."""

    def __init__(self, model: torch.nn.Module, preprocessor: ImagePreprocessor, device: str, dtype: torch.dtype | None):
        self.model = model
        self.preprocessor = preprocessor
        self.device = device
        self.dtype = dtype

    @classmethod
    def load(cls, config: EncoderConfig) -> OpenClipEncoder:
        """Build the model and load its weights (tag, checkpoint file or local dir) on the device."""
        device = resolve_device(config.device)
        if device == "cpu" and config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        model = create_model(config, device)
        model.eval()
        dtype = autocast_dtype(config.precision, device)
        return cls(model, ImagePreprocessor(resolve_preprocess_cfg(config)), device, dtype)

    def _autocast(self):
        enabled = self.dtype is not None
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type, dtype=self.dtype or torch.float32, enabled=enabled)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x 3 -> float32 N x dim, L2-normalised."""
        return self.embed_pixel_tensor(
            torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, non_blocking=True)
        )

    @torch.inference_mode()
    def embed_pixel_tensor(self, pixels: torch.Tensor) -> np.ndarray:
        """uint8 N x H x W x 3 already on the model's device (e.g. decoded there) -> float32 N x dim, L2-normalised."""
        with self._autocast():
            features = self.model.encode_image(self.preprocessor.normalise(pixels))
        return _l2_normalise(features)

    @torch.inference_mode()
    def embed_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """int64 N x context_length -> float32 N x dim, L2-normalised."""
        batch = torch.from_numpy(np.ascontiguousarray(tokens)).to(self.device, non_blocking=True)
        with self._autocast():
            features = self.model.encode_text(batch)
        return _l2_normalise(features)

    def embed(self, pixels: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both towers on one batch of samples: (image embeddings, text embeddings)."""
        return self.embed_pixels(pixels), self.embed_tokens(tokens)


def _l2_normalise(features: torch.Tensor) -> np.ndarray:
    """The one place embeddings are L2-normalised (in float32, whatever the autocast dtype)."""
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()
