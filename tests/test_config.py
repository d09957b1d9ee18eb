"""Config dataclasses: validation messages and YAML job files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmembed.config import ConfigError, EmbedJobConfig, EncoderConfig, MakeShardsConfig


def test_yaml_job_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "shards: data/{00000..00009}.tar\nout: data/emb\noutput_dtype: float16\n"
        "encoder: {model: ViT-B-32, pretrained: laion2b_s34b_b79k, device: cuda, batch_size: 256}\n"
        "decode: {caption_key: caption, image_extensions: [jpg, webp]}\n"
    )
    config = EmbedJobConfig.from_yaml(path)
    assert config.shards == ("data/{00000..00009}.tar",)
    assert config.encoder == EncoderConfig(
        model="ViT-B-32", pretrained="laion2b_s34b_b79k", device="cuda", batch_size=256
    )
    assert config.decode.image_extensions == ("jpg", "webp") and config.output_dtype == "float16"


def test_unknown_keys_are_named(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("shards: a.tar\nout: o\nencoder: {modle: x}\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['modle'\] in encoder config"):
        EmbedJobConfig.from_yaml(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "device 'tpu'"),
        ({"batch_size": 0}, "batch size"),
        ({"pretrained": "x", "checkpoint": "y"}, "not both"),
        ({"precision": "int8"}, "precision"),
    ],
)
def test_encoder_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EncoderConfig(**kwargs)


def test_job_needs_shards() -> None:
    with pytest.raises(ConfigError, match="no input shards"):
        EmbedJobConfig(shards=(), out="o")
    with pytest.raises(ConfigError, match=r"embed config needs key\(s\) \['out'\]"):
        EmbedJobConfig.from_dict({"shards": "a.tar"})


@pytest.mark.parametrize("sources", [{}, {"images": "p", "manifest": "m.csv"}])
def test_make_shards_takes_exactly_one_source(sources: dict) -> None:
    with pytest.raises(ConfigError, match="give one input: --images DIR, --manifest FILE or --dataset NAME"):
        MakeShardsConfig(out="s", **sources)


def test_cpu_inference_threads_leave_the_decode_threads_their_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmembed.config import default_cpu_inference_threads

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_cpu_inference_threads(4) == 12
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_cpu_inference_threads(2) == 1  # never fewer than one
