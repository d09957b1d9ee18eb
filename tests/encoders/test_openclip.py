"""OpenCLIP loading paths (bundled config, local checkpoint, local dir) and the split preprocessing."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from mmembed.config import ConfigError, EncoderConfig
from mmembed.encoders.openclip import (
    CaptionTokenizer,
    ImagePreprocessor,
    OpenClipEncoder,
    create_model,
    provenance,
    register_bundled_configs,
    resolve_device,
    resolve_preprocess_cfg,
)
from tests.photos import load_photo

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def photos() -> list:
    return [load_photo(name).convert("RGB") for name in ("astronaut", "coffee", "chelsea")]


def direct_embeddings(
    model: torch.nn.Module, preprocess, tokenizer, captions: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """What a plain open_clip user would compute: the model's own transform and tokenizer."""
    with torch.no_grad():
        images = torch.stack([preprocess(p) for p in photos()])
        image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    return image.numpy(), text.numpy()


def encoder_embeddings(
    encoder: OpenClipEncoder, config: EncoderConfig, captions: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.stack([encoder.preprocessor.to_pixels(p) for p in photos()])
    return encoder.embed(pixels, CaptionTokenizer(config)(captions))


CAPTIONS = ["an astronaut", "a cup of coffee", "a cat"]


def test_split_preprocessing_equals_open_clip_transform(tiny_config: EncoderConfig) -> None:
    register_bundled_configs()
    _, _, preprocess = open_clip.create_model_and_transforms(tiny_config.model)
    ours = ImagePreprocessor(resolve_preprocess_cfg(tiny_config))
    image = photos()[0]
    pixels = ours.to_pixels(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (224, 224, 3)
    expected = preprocess(image)
    actual = ours.normalise(torch.from_numpy(pixels)[None])[0]
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


def test_checkpoint_saved_by_test_loads_through_checkpoint_path(tmp_path: Path, tiny_config: EncoderConfig) -> None:
    register_bundled_configs()
    torch.manual_seed(123)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_config.model)
    model.eval()
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)

    config = replace(tiny_config, checkpoint=str(checkpoint), random_init=False)
    encoder = OpenClipEncoder.load(config)
    image, text = encoder_embeddings(encoder, config, CAPTIONS)
    want_image, want_text = direct_embeddings(model, preprocess, open_clip.get_tokenizer(config.model), CAPTIONS)
    np.testing.assert_allclose(image, want_image, atol=1e-5)
    np.testing.assert_allclose(text, want_text, atol=1e-5)
    # The checkpoint's weights, not the seeded random init, were used.
    random_image, _ = encoder_embeddings(OpenClipEncoder.load(tiny_config), tiny_config, CAPTIONS)
    assert not np.allclose(random_image, image, atol=1e-3)

    prov = provenance(config)
    assert prov["weights"].startswith("checkpoint-sha256:") and len(prov["checkpoint_sha256"]) == 64
    assert prov["dim"] == 64 and prov["init_seed"] is None


def test_local_dir_with_test_made_tiny_config(tmp_path: Path) -> None:
    """A config written by the test (no bundled name), weights saved beside it, loaded via local-dir:."""
    folder = tmp_path / "tiny-model"
    folder.mkdir()
    preprocess_cfg = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": preprocess_cfg}))
    torch.manual_seed(7)
    model = open_clip.model.CLIP(**TINY_CFG)
    model.eval()
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")

    config = EncoderConfig(model=f"local-dir:{folder}", device="cpu")
    resolved = resolve_preprocess_cfg(config)
    assert resolved["size"] == [64, 64] and resolved["interpolation"] == "bilinear" and resolved["mean"] == [0.5] * 3
    encoder = OpenClipEncoder.load(config)
    image, text = encoder_embeddings(encoder, config, CAPTIONS)
    assert image.shape == (3, 32) and text.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)

    with torch.no_grad():
        pixels = np.stack([encoder.preprocessor.to_pixels(p) for p in photos()])
        want = model.encode_image(encoder.preprocessor.normalise(torch.from_numpy(pixels)))
    np.testing.assert_allclose(image, torch.nn.functional.normalize(want, dim=-1).numpy(), atol=1e-5)

    first = provenance(config)["weights"]
    torch.save(open_clip.model.CLIP(**TINY_CFG).state_dict(), folder / "open_clip_pytorch_model.bin")
    assert provenance(config)["weights"] != first  # new weights, new provenance


def test_seeded_random_init_is_reproducible(tiny_config: EncoderConfig) -> None:
    first = encoder_embeddings(OpenClipEncoder.load(tiny_config), tiny_config, CAPTIONS)
    second = encoder_embeddings(OpenClipEncoder.load(tiny_config), tiny_config, CAPTIONS)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_pretrained_tag_resolves_offline_but_loading_says_how_to_fix() -> None:
    config = EncoderConfig(model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cpu")
    prov = provenance(config)  # no download needed for provenance and preprocessing
    assert prov["dim"] == 512 and prov["weights"] == "pretrained:laion2b_s34b_b79k"
    with pytest.raises(RuntimeError, match="--checkpoint FILE"):
        OpenClipEncoder.load(config)


def test_unknown_model_and_tag_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown model"):
        provenance(EncoderConfig(model="no-such-model", random_init=True))
    with pytest.raises(ConfigError, match="known tags"):
        resolve_preprocess_cfg(EncoderConfig(model="ViT-B-32", pretrained="no-such-tag"))


def test_missing_checkpoint_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        EncoderConfig(checkpoint=str(tmp_path / "missing.pt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is absent")
def test_cuda_requested_without_cuda_fails_fast() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available.*--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_embeddings_match_cpu(tiny_config: EncoderConfig) -> None:
    cpu = encoder_embeddings(OpenClipEncoder.load(tiny_config), tiny_config, CAPTIONS)
    gpu_config = replace(tiny_config, device="cuda", precision="fp32")
    gpu = encoder_embeddings(OpenClipEncoder.load(gpu_config), gpu_config, CAPTIONS)
    np.testing.assert_allclose(gpu[0], cpu[0], atol=1e-3)
    np.testing.assert_allclose(gpu[1], cpu[1], atol=1e-3)
    half_config = replace(tiny_config, device="cuda", precision="auto")
    half = encoder_embeddings(OpenClipEncoder.load(half_config), half_config, CAPTIONS)
    assert np.min(np.sum(half[0] * cpu[0], axis=1)) > 0.99


def test_random_init_does_not_repeat_open_clip_s_root_warning(
    tiny_config: EncoderConfig, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        create_model(tiny_config, "cpu")
        logging.warning("No pretrained weights loaded for a model outside mmembed")  # the filter is gone again
    notices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("No pretrained weights")]
    assert notices == ["No pretrained weights loaded for a model outside mmembed"]
