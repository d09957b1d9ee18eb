"""The RunInference model handler: batching by model inputs only, one copy per GPU, per-shard outputs, other
records passed on in order, failed batches recorded per sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from mmembed.beam.embed import OpenClipModelHandler, model_input_weight
from mmembed.config import EncoderConfig
from mmembed.encoders.openclip import CaptionTokenizer, resolve_preprocess_cfg
from mmembed.records import EmbeddedChunk, ModelInput, SampleError, ShardEnd, ShardSource
from tests.helpers import offline_test_pipeline


def model_inputs(config: EncoderConfig, count: int, shards: Sequence[str] = ("s",)) -> list[ModelInput]:
    """``count`` samples with keys ``k0``, ``k1``, ...; sample i belongs to ``shards[i * len(shards) // count]``."""
    rng = np.random.default_rng(0)
    size = resolve_preprocess_cfg(config)["size"]
    tokens = CaptionTokenizer(config)([f"caption {i}" for i in range(count)])
    return [
        ModelInput(
            row={"shard": shards[i * len(shards) // count], "key": f"k{i}", "offset": i},
            pixels=rng.integers(0, 256, (*size, 3), dtype=np.uint8),
            tokens=tokens[i],
        )
        for i in range(count)
    ]


def test_gpu_handler_shares_one_model_copy_and_cpu_does_not(tiny_config: EncoderConfig) -> None:
    gpu = OpenClipModelHandler(replace(tiny_config, device="cuda", batch_size=256))
    assert gpu.share_model_across_processes() and gpu.model_copies() == 1
    assert gpu.batch_elements_kwargs() == {
        "min_batch_size": 256,
        "max_batch_size": 256,
        "element_size_fn": model_input_weight,
    }
    assert not OpenClipModelHandler(tiny_config).share_model_across_processes()


def test_run_inference_is_normalised_batch_independent_and_one_chunk_per_shard(tiny_config: EncoderConfig) -> None:
    handler = OpenClipModelHandler(tiny_config)
    model = handler.load_model()
    inputs = model_inputs(tiny_config, 6, shards=("a", "b"))
    whole = handler.run_inference(inputs, model)
    assert [(c.shard, [row["key"] for row in c.rows]) for c in whole] == [
        ("a", ["k0", "k1", "k2"]),
        ("b", ["k3", "k4", "k5"]),
    ]
    parts = [*handler.run_inference(inputs[:2], model), *handler.run_inference(inputs[2:], model)]
    assert [(c.shard, len(c)) for c in parts] == [("a", 2), ("a", 1), ("b", 3)]
    for name in ("image_embeddings", "text_embeddings", "similarity"):
        joined = np.concatenate([getattr(c, name) for c in whole])
        np.testing.assert_allclose(np.concatenate([getattr(c, name) for c in parts]), joined, atol=1e-5)
    for chunk in whole:
        np.testing.assert_allclose(np.linalg.norm(chunk.text_embeddings, axis=1), 1, atol=1e-5)
        cosine = np.sum(chunk.image_embeddings * chunk.text_embeddings, axis=1)
        np.testing.assert_allclose(chunk.similarity, cosine, atol=1e-6)


def test_batches_count_model_inputs_only_and_pass_other_records_on_in_order(tiny_config: EncoderConfig) -> None:
    """Errors and shard ends ride in the batches without taking a slot; each batch's chunks come before the
    records that followed its inputs, so a shard's end reaches the writer after all of its rows."""
    config = replace(tiny_config, batch_size=3)
    inputs = model_inputs(config, 6, shards=("a", "b"))
    error = SampleError("a", "bad", "bad.jpg", "decode", "bad_image", "shard a: member bad.jpg: broken")
    end_a = ShardEnd(ShardSource("a.tar"), "a", 4)
    end_b = ShardEnd(ShardSource("b.tar"), "b", 3)
    records = [*inputs[:2], error, inputs[2], end_a, *inputs[3:], end_b]

    def describe(out: object) -> tuple:
        if isinstance(out, EmbeddedChunk):
            return ("chunk", out.shard, tuple(row["key"] for row in out.rows))
        return (type(out).__name__, out.shard)

    with offline_test_pipeline() as p:
        outputs = p | beam.Create(records, reshuffle=False) | RunInference(OpenClipModelHandler(config))
        batches = outputs | beam.combiners.ToList() | beam.Map(lambda found: [describe(o) for o in found])
        assert_that(
            batches,
            equal_to(
                [
                    [
                        ("chunk", "a", ("k0", "k1", "k2")),
                        ("SampleError", "a"),
                        ("ShardEnd", "a"),
                        ("chunk", "b", ("k3", "k4", "k5")),
                        ("ShardEnd", "b"),
                    ]
                ]
            ),
        )


class DeviceAssert:
    """An encoder whose every call fails, like a GPU after a device-side assert."""

    def embed_pixels(self, pixels: Any) -> Any:
        raise RuntimeError("CUDA error: device-side assert triggered")

    embed_tokens = embed_pixels


class FailsOnKey(OpenClipModelHandler):
    """The model raises on any batch that holds the key ``k3``, like a model hitting a bad input."""

    def embed_inputs(self, inputs: Sequence[ModelInput], model: Any) -> Any:
        broken = any(item.row["key"] == "k3" for item in inputs)
        return super().embed_inputs(inputs, DeviceAssert() if broken else model)


def test_a_failing_batch_becomes_one_error_per_sample_and_the_job_goes_on(tiny_config: EncoderConfig) -> None:
    config = replace(tiny_config, batch_size=2)
    with offline_test_pipeline() as p:
        out = p | beam.Create(model_inputs(config, 6), reshuffle=False) | RunInference(FailsOnKey(config))
        assert_that(
            out
            | "GoodKeys" >> beam.FlatMap(lambda c: [r["key"] for r in c.rows] if isinstance(c, EmbeddedChunk) else []),
            equal_to(["k0", "k1", "k4", "k5"]),
            label="four embedded",
        )
        assert_that(
            out
            | beam.Filter(lambda e: isinstance(e, SampleError))
            | beam.Map(lambda e: (e.key, e.code, e.stage, "device-side assert" in e.reason))
            | beam.combiners.ToList()
            | beam.Map(sorted),
            equal_to([[("k2", "encode_failed", "encode", True), ("k3", "encode_failed", "encode", True)]]),
            label="two recorded",
        )
