"""Encode search queries (texts, image files) with the same model that embedded the data.

The encoder is rebuilt from the provenance recorded at embed time, so a query is never encoded by
a different model than the index it searches; an override is checked against that provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmembed.config import RANDOM_INIT_WEIGHTS, ConfigError, DecodeConfig, EncoderConfig
from mmembed.decode import DecodeError, decode_image, to_rgb
from mmembed.encoders.openclip import CaptionTokenizer, OpenClipEncoder, embedding_dim, provenance
from mmembed.schema import IDENTITY_KEYS, full_provenance


def encoder_config_from_provenance(prov: dict[str, Any], device: str = "auto") -> EncoderConfig:
    """The EncoderConfig that reproduces the recorded model (name, tag or checkpoint, init seed)."""
    return EncoderConfig(
        model=prov["model"],
        pretrained=prov.get("pretrained"),
        checkpoint=prov.get("checkpoint"),
        seed=prov.get("init_seed") or 0,
        random_init=prov.get("weights") == RANDOM_INIT_WEIGHTS,
        device=device,
        precision="fp32" if device == "cpu" else "auto",
        batch_size=64,
    )


def check_same_encoder(data_prov: dict[str, Any], query_config: EncoderConfig, where: str) -> None:
    """Refuse a query encoder whose model, weights, dim or preprocessing differ from the data's."""
    query_prov = full_provenance(provenance(query_config), "float32")
    diffs = [
        f"{name} {data_prov.get(name)!r:.60} there, {query_prov.get(name)!r:.60} here"
        for name in IDENTITY_KEYS
        if data_prov.get(name) != query_prov.get(name)
    ]
    if diffs:  # the first difference only: a model's preprocessing alone is hundreds of characters
        raise ConfigError(
            f"{where} was embedded by a different model than the query encoder ({diffs[0]}); "
            "fix: leave out --model and --pretrained (the recorded model is used)"
        )


class QueryEncoder:
    """Texts and images -> L2-normalised float32 embeddings in the data's embedding space."""

    def __init__(self, config: EncoderConfig, decode: DecodeConfig | None = None) -> None:
        self.config = config
        self.decode = decode or DecodeConfig()
        self.encoder = OpenClipEncoder.load(config)
        self.tokenize = CaptionTokenizer(config)
        self.dim = embedding_dim(config)

    @classmethod
    def for_provenance(
        cls, prov: dict[str, Any], where: str, override: EncoderConfig | None = None, device: str = "auto"
    ) -> QueryEncoder:
        """The recorded model, or ``override`` after checking it matches the recorded one."""
        config = override or encoder_config_from_provenance(prov, device)
        if config.checkpoint and not Path(config.checkpoint).is_file():
            raise ConfigError(
                f"{where}: the recorded checkpoint {config.checkpoint} is not here; pass --checkpoint FILE"
            )
        check_same_encoder(prov, config, where)
        return cls(config)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self._batched(self.encoder.embed_tokens, self.tokenize(list(texts)) if texts else [])

    def _batched(self, embed: Callable[[np.ndarray], np.ndarray], inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Run ``embed`` over ``inputs`` in batches of the configured size."""
        size = self.config.batch_size
        parts = [embed(np.stack(inputs[i : i + size])) for i in range(0, len(inputs), size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def encode_images(self, images: Sequence[Image.Image | tuple[bytes, str]]) -> np.ndarray:
        """Encoded images: PIL images (any mode, made RGB) or (file bytes, name) pairs, decoded first (an
        undecodable file raises ValueError naming it)."""
        pixels = []
        for item in images:
            if isinstance(item, Image.Image):
                image = to_rgb(item)
            else:
                data, name = item
                try:
                    image = decode_image(data, self.decode.max_image_pixels)
                except DecodeError as exc:
                    raise ValueError(f"query {name}: {exc}") from None
            pixels.append(self.encoder.preprocessor.to_pixels(image))
        return self._batched(self.encoder.embed_pixels, pixels)


def fuse(image: np.ndarray, text: np.ndarray, text_weight: float) -> np.ndarray:
    """A composed query: (1 - w) * image + w * text, re-normalised (both inputs already normalised)."""
    if not 0.0 <= text_weight <= 1.0:
        raise ConfigError(f"text weight must be within [0, 1], got {text_weight}")
    mixed = (1.0 - text_weight) * image + text_weight * text
    norms = np.linalg.norm(mixed, axis=-1, keepdims=True)
    return (mixed / np.maximum(norms, 1e-12)).astype(np.float32)
