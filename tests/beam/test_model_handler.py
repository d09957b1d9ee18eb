"""The RunInference model handler: batching, one copy per GPU, per-shard outputs, failed batches recorded per sample."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from mmembed.beam.embed import OpenClipModelHandler, failed_batch_to_errors
from mmembed.config import EncoderConfig
from mmembed.encoders.openclip import CaptionTokenizer, resolve_preprocess_cfg
from mmembed.records import ModelInput
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
    assert gpu.batch_elements_kwargs() == {"min_batch_size": 256, "max_batch_size": 256}
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


class FailsOnKey(OpenClipModelHandler):
    """Raises on any batch that holds the key ``k3``, like a model hitting a bad input."""

    def run_inference(self, batch: Sequence[ModelInput], model: Any, inference_args: Any = None) -> Any:
        if any(item.row["key"] == "k3" for item in batch):
            raise RuntimeError("CUDA error: device-side assert triggered")
        return super().run_inference(batch, model, inference_args)


def test_a_failing_batch_becomes_one_error_per_sample(tiny_config: EncoderConfig) -> None:
    config = replace(tiny_config, batch_size=2)
    with offline_test_pipeline() as p:
        good, failed = (
            p | beam.Create(model_inputs(config, 6)) | RunInference(FailsOnKey(config)).with_exception_handling()
        )
        errors = failed.failed_inferences | beam.FlatMap(failed_batch_to_errors)
        assert_that(
            good | "GoodKeys" >> beam.FlatMap(lambda c: [row["key"] for row in c.rows]),
            equal_to(["k0", "k1", "k4", "k5"]),
            label="four embedded",
        )
        assert_that(
            errors
            | beam.Map(lambda e: (e.code, e.stage, "device-side assert" in e.reason))
            | beam.combiners.Count.PerElement(),
            equal_to([(("encode_failed", "encode", True), 2)]),
            label="two recorded",
        )
