"""Beam pieces of the embed job: read + decode shards, preprocess, RunInference, write per-shard Parquet.

Each DoFn is a thin wrapper around a plain function in ``mmembed``. Samples go into RunInference one
element each, so batches fill as samples arrive; they come out as one ``EmbeddedChunk`` per shard
in a batch, so grouping and writing handle a few arrays per batch rather than an element per sample.
Every sample ends in an embedded chunk or as a ``SampleError``, and the writer groups both by shard.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from mmembed.config import DecodeConfig, EncoderConfig
from mmembed.decode import decode_sample
from mmembed.encoders.openclip import CaptionTokenizer, ImagePreprocessor, OpenClipEncoder, resolve_preprocess_cfg
from mmembed.outputs import ShardOutputs
from mmembed.parallel import map_ordered
from mmembed.preprocess import prepare_sample
from mmembed.records import STAGE_ENCODE, EmbeddedChunk, ModelInput, RawSample, SampleError
from mmembed.schema import chunk_table, errors_table
from mmembed.shards import iter_shard_samples, shard_name, unreadable_shard_error

from . import filesystem

log = logging.getLogger(__name__)

NAMESPACE = "mmembed"
ERRORS_TAG = "errors"


def _count_error(error: SampleError) -> SampleError:
    name = "shard_errors" if error.is_shard_error else "sample_errors"
    Metrics.counter(NAMESPACE, name).inc()
    Metrics.counter(NAMESPACE, f"errors.{error.code}").inc()
    return error


class ReadAndPrepareShard(beam.DoFn):
    """shard URL -> model inputs (main output) and ``SampleError`` records (``errors`` output).

    The tar is streamed in order; decoding, resize/crop and tokenizing run on a small thread pool
    (Pillow releases the GIL), so they overlap with each other and with inference downstream.
    """

    def __init__(self, decode_config: DecodeConfig, encoder_config: EncoderConfig) -> None:
        self.decode_config = decode_config
        self.encoder_config = encoder_config

    def setup(self) -> None:
        self.preprocessor = ImagePreprocessor(resolve_preprocess_cfg(self.encoder_config))
        self.tokenizer = CaptionTokenizer(self.encoder_config)
        self.pool = ThreadPoolExecutor(self.decode_config.threads, thread_name_prefix="mmembed-decode")

    def teardown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def prepare(self, item: RawSample | SampleError) -> ModelInput | SampleError:
        """One raw sample -> model input, or the error of the first stage that failed."""
        if isinstance(item, SampleError):
            return item
        decoded = decode_sample(item, self.decode_config)
        if isinstance(decoded, SampleError):
            return decoded
        return prepare_sample(decoded, self.preprocessor.to_pixels, self.tokenizer)

    def process(self, url: str) -> Iterator[Any]:
        shard = shard_name(url)
        try:
            stream = filesystem.open_read(url)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable shard is recorded, not fatal
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, _count_error(unreadable_shard_error(url, exc)))
            return
        window = 4 * self.decode_config.threads + self.encoder_config.batch_size
        with stream:
            try:
                items = iter_shard_samples(stream, shard, self.decode_config.image_extensions)
                for item in map_ordered(self.pool, self.prepare, items, window):
                    if not (isinstance(item, SampleError) and item.is_shard_error):
                        Metrics.counter(NAMESPACE, "samples_in").inc()
                    if isinstance(item, SampleError):
                        yield beam.pvalue.TaggedOutput(ERRORS_TAG, _count_error(item))
                    else:
                        yield item
            except Exception as exc:  # noqa: BLE001 - an unexpected failure costs this shard, not the whole job
                log.exception("shard %s: processing failed", shard)
                reason = (
                    f"shard {shard}: stopped by an unexpected error ({type(exc).__name__}: {exc}); the samples "
                    "read before it are kept; re-run with --overwrite to retry the shard"
                )
                error = SampleError(shard, None, None, "shard", "shard_failed", reason)
                yield beam.pvalue.TaggedOutput(ERRORS_TAG, _count_error(error))


class OpenClipModelHandler(ModelHandler[ModelInput, EmbeddedChunk, OpenClipEncoder]):
    """RunInference handler: a batch of ``ModelInput`` -> both towers -> one ``EmbeddedChunk`` per shard in it.

    Inputs stay one element per sample: a batch runs as soon as it is full, while the decode threads
    keep going (whole-chunk inputs measured slower: each shard's last chunk ran with the decoders
    idle). Outputs are per shard, so downstream Beam codes and groups a few arrays per batch instead
    of an element per sample. The model loads in ``load_model`` on the worker. On a GPU the model is
    shared across the SDK processes of a worker (one copy per GPU), instead of one copy per process.
    """

    def __init__(self, config: EncoderConfig) -> None:
        share = config.device == "cuda"
        super().__init__(
            min_batch_size=config.batch_size,
            max_batch_size=config.batch_size,
            large_model=share,
            model_copies=1 if share else None,
        )
        self.config = config

    def load_model(self) -> OpenClipEncoder:
        return OpenClipEncoder.load(self.config)

    def run_inference(
        self, batch: Sequence[ModelInput], model: OpenClipEncoder, inference_args: dict[str, Any] | None = None
    ) -> Iterable[EmbeddedChunk]:
        pixels = np.stack([item.pixels for item in batch])
        tokens = np.stack([item.tokens for item in batch])
        image_emb, text_emb = model.embed(pixels, tokens)
        similarity = np.einsum("ij,ij->i", image_emb, text_emb)
        Metrics.counter(NAMESPACE, "embedded").inc(len(batch))
        return EmbeddedChunk.per_shard([item.row for item in batch], image_emb, text_emb, similarity)

    def get_num_bytes(self, batch: Sequence[ModelInput]) -> int:
        return sum(item.pixels.nbytes + item.tokens.nbytes for item in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


def failed_batch_to_errors(failure: tuple[Sequence[ModelInput], Exception]) -> Iterator[SampleError]:
    """A batch the model raised on: every sample in it is recorded with the exception."""
    batch, exc = failure
    for item in batch:
        row = item.row
        yield _count_error(
            SampleError(
                row["shard"],
                row["key"],
                None,
                STAGE_ENCODE,
                "encode_failed",
                f"shard {row['shard']}: sample {row['key']}: the encoder failed on its batch "
                f"({type(exc).__name__}: {exc})",
            )
        )


class WriteShardOutputs(beam.DoFn):
    """(shard, {chunks, errors}) -> embeddings/<shard>.parquet (rows by offset) then errors/<shard>.parquet,
    atomically."""

    def __init__(self, out: str, schema: Any, total_shards: int) -> None:
        self.out = out
        self.schema = schema
        self.total_shards = total_shards
        self.written = Metrics.counter(NAMESPACE, "shards_written")
        self.done = 0

    def process(self, element: tuple[str, dict[str, list]]) -> Iterator[dict[str, Any]]:
        shard, grouped = element
        embedded = EmbeddedChunk.join(shard, list(grouped["chunks"]))
        errors = sorted(grouped["errors"], key=lambda e: (e.key is None, e.key or "", e.member or ""))
        outputs = ShardOutputs.for_shard(self.out, shard)
        filesystem.write_atomic(outputs.embeddings, lambda f: pq.write_table(chunk_table(embedded, self.schema), f))
        filesystem.write_atomic(outputs.errors, lambda f: pq.write_table(errors_table(errors), f))
        self.written.inc()
        self.done += 1
        log.info(
            "shard %s: %d embedded, %d errors (%d shards written by this worker, %d in the job)",
            shard,
            len(embedded),
            len(errors),
            self.done,
            self.total_shards,
        )
        yield {"shard": shard, "embedded": len(embedded), "errors": len(errors)}


class EmbedShards(beam.PTransform):
    """PCollection of shard URLs -> per-shard Parquet outputs; yields one stats dict per shard."""

    def __init__(self, encoder: EncoderConfig, decode: DecodeConfig, out: str, schema: Any, total_shards: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decode = decode
        self.out = out
        self.schema = schema
        self.total_shards = total_shards

    def expand(self, urls: beam.PCollection) -> beam.PCollection:
        urls = urls | "SpreadShards" >> beam.Reshuffle()
        read = ReadAndPrepareShard(self.decode, self.encoder)
        prepared = urls | "ReadAndPrepare" >> beam.ParDo(read).with_outputs(ERRORS_TAG, main="inputs")
        inference = (
            prepared.inputs | "Encode" >> RunInference(OpenClipModelHandler(self.encoder)).with_exception_handling()
        )
        encode_errors = inference[1].failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch_to_errors)

        errors = (prepared[ERRORS_TAG], encode_errors) | "AllErrors" >> beam.Flatten()
        grouped = {
            "shards": urls | "KeyShards" >> beam.Map(lambda url: (shard_name(url), url)),
            "chunks": inference[0] | "KeyChunks" >> beam.Map(lambda c: (c.shard, c)),
            "errors": errors | "KeyErrors" >> beam.Map(lambda e: (e.shard, e)),
        }
        return (
            grouped
            | "GroupByShard" >> beam.CoGroupByKey()
            | "Write" >> beam.ParDo(WriteShardOutputs(self.out, self.schema, self.total_shards))
        )
