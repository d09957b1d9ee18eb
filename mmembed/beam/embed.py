"""Beam pieces of the embed job: read + decode shards, preprocess, RunInference, commit each shard as it ends.

One fused chain, no shuffle after the shard list is spread over workers:

    shard -> ReadAndPrepareShard -> RunInference(OpenClipModelHandler) -> WriteShardOutputs

The reader yields, in tar order, a ``ModelInput`` or a ``SampleError`` per sample and, last, a ``ShardEnd``.
All three travel through RunInference's batches (only model inputs count towards a batch's size, so batches
of inputs are exactly what they would be without the others); the handler embeds the inputs and passes the
rest on, in order. So the writer sees every record of a shard before that shard's ``ShardEnd``, and commits
the shard then: output is durable shard by shard while other shards are still being read, and memory holds
about one shard, however large the input. A GroupByKey in front of the writer would be a barrier over the
whole dataset (nothing written before everything is embedded), on Dataflow as on the local runner.

With ``--decode gpu`` (``DecodeConfig.decoder``) the reader leaves each JPEG it can encoded (header, hashes of
the bytes, caption and tokens only), and the model handler has it decoded, resized and perceptually hashed on
the model's device (``mmembed.gpudecode``); other images, and JPEGs the device refuses, take the CPU path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference

from mmembed import storage
from mmembed.config import DecodeConfig, EncoderConfig
from mmembed.decode import decode_sample
from mmembed.embed.resume import output_metadata
from mmembed.encoders.openclip import CaptionTokenizer, ImagePreprocessor, OpenClipEncoder, resolve_preprocess_cfg
from mmembed.gpudecode import DeviceDecodingEncoder, DeviceEmbeddings, prepare_for_device
from mmembed.outputs import ShardOutputs
from mmembed.parallel import map_ordered
from mmembed.preprocess import prepare_sample
from mmembed.records import (
    STAGE_DECODE,
    STAGE_ENCODE,
    EmbeddedChunk,
    ModelInput,
    RawSample,
    SampleError,
    ShardEnd,
    ShardSource,
)
from mmembed.schema import chunk_table, errors_table
from mmembed.shards import iter_shard_samples, shard_name, unreadable_shard_error

from .metrics import job_counters
from .runner import make_pipeline

log = logging.getLogger(__name__)

NAMESPACE = "mmembed"
ShardRecord = ModelInput | SampleError | ShardEnd  # what the reader yields, in tar order
# --decode gpu counters: images decoded on the device; decoded on CPU by the reader because the device path does not
# take them (PNG, WebP, CMYK JPEG, ...); JPEGs the device decoder refused, decoded on CPU by the model handler
GPU_DECODED = "gpu_decode.decoded"
GPU_FALLBACK_FORMAT = "gpu_decode.cpu_fallback.format"
GPU_FALLBACK_REFUSED = "gpu_decode.cpu_fallback.refused"
WriterRecord = EmbeddedChunk | SampleError | ShardEnd  # what the writer receives, still in order per shard


def _count_error(error: SampleError) -> SampleError:
    name = "shard_errors" if error.is_shard_error else "sample_errors"
    Metrics.counter(NAMESPACE, name).inc()
    Metrics.counter(NAMESPACE, f"errors.{error.code}").inc()
    return error


def unexpected_sample_error(item: RawSample, exc: Exception) -> SampleError:
    """The record for a sample whose decode or preprocess raised something no stage expected: it costs that
    sample only, and the reason says enough to report it."""
    return SampleError(
        item.shard,
        item.key,
        None,
        STAGE_DECODE,
        "sample_failed",
        f"shard {item.shard}: sample {item.key}: failed unexpectedly ({type(exc).__name__}: {exc}); the other "
        "samples were processed; fix: check this sample's files, and report the error if they look valid",
    )


class SamplePreparer:
    """One raw sample -> a ``ModelInput`` or the ``SampleError`` of the first stage that failed, never an exception.

    The CPU path decodes the image (reduced-scale for a large JPEG unless ``exact_decode``), resizes/crops it and
    tokenizes the caption. With ``--decode gpu`` a JPEG the device can take is only read up to its header and
    travels encoded (``mmembed.gpudecode.prepare_for_device``); any other sample takes the CPU path. The model
    handler uses ``on_cpu`` for the JPEGs the device decoder refuses.
    """

    def __init__(self, decode_config: DecodeConfig, encoder_config: EncoderConfig) -> None:
        self.decode_config = decode_config
        self.preprocessor = ImagePreprocessor(resolve_preprocess_cfg(encoder_config))
        self.reduce_to = None if decode_config.exact_decode else self.preprocessor.input_side
        self.tokenizer = CaptionTokenizer(encoder_config)
        self.on_device = decode_config.decoder == "gpu"

    def __call__(self, item: RawSample | SampleError) -> ModelInput | SampleError:
        if isinstance(item, SampleError):
            return item
        try:
            if self.on_device:
                prepared = prepare_for_device(item, self.decode_config, self.tokenizer)
                if prepared is not None:
                    return prepared
            return self._cpu(item)
        except Exception as exc:  # noqa: BLE001 - whatever one sample raises is recorded against that sample
            return unexpected_sample_error(item, exc)

    def on_cpu(self, item: RawSample) -> ModelInput | SampleError:
        """The CPU path for ``item``, whatever the decoder setting."""
        try:
            return self._cpu(item)
        except Exception as exc:  # noqa: BLE001 - as in __call__
            return unexpected_sample_error(item, exc)

    def _cpu(self, item: RawSample) -> ModelInput | SampleError:
        decoded = decode_sample(item, self.decode_config, self.reduce_to)
        if isinstance(decoded, SampleError):
            return decoded
        return prepare_sample(decoded, self.preprocessor.to_pixels, self.tokenizer)


class ReadAndPrepareShard(beam.DoFn):
    """``ShardSource`` -> a ``ModelInput`` or ``SampleError`` per sample in tar order, then one ``ShardEnd``.

    The tar is streamed in order; decoding, resize/crop and tokenizing (``SamplePreparer``) run on a small thread
    pool (Pillow releases the GIL), so they overlap with each other and with inference downstream.
    """

    def __init__(self, decode_config: DecodeConfig, encoder_config: EncoderConfig) -> None:
        self.decode_config = decode_config
        self.encoder_config = encoder_config

    def setup(self) -> None:
        self.prepare = SamplePreparer(self.decode_config, self.encoder_config)
        self.pool = ThreadPoolExecutor(self.decode_config.threads, thread_name_prefix="mmembed-decode")
        self.samples_in = Metrics.counter(NAMESPACE, "samples_in")
        self.cpu_fallbacks = Metrics.counter(NAMESPACE, GPU_FALLBACK_FORMAT)

    def teardown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def process(self, source: ShardSource) -> Iterator[ShardRecord]:
        shard = shard_name(source.url)
        samples = encoded = on_cpu = 0
        for record in self._records(source, shard):
            if isinstance(record, SampleError):
                _count_error(record)
            elif self.prepare.on_device:
                encoded += record.encoded is not None
                on_cpu += record.encoded is None
            if not (isinstance(record, SampleError) and record.is_shard_error):
                samples += 1
                self.samples_in.inc()
            yield record
        if self.prepare.on_device:
            self.cpu_fallbacks.inc(on_cpu)
            log.info(
                "shard %s: %d JPEGs left for the device decoder, %d images decoded on CPU (not an RGB or grayscale "
                "JPEG)",
                shard,
                encoded,
                on_cpu,
            )
        yield ShardEnd(source, shard, samples)

    def _records(self, source: ShardSource, shard: str) -> Iterator[ModelInput | SampleError]:
        try:
            stream = storage.open_read(source.url)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable shard is recorded, not fatal
            yield unreadable_shard_error(source.url, exc)
            return
        window = 4 * self.decode_config.threads + self.encoder_config.batch_size
        with stream:
            try:
                items = iter_shard_samples(stream, shard, self.decode_config.image_extensions)
                yield from map_ordered(self.pool, self.prepare, items, window)
            except Exception as exc:  # noqa: BLE001 - a failure of the tar stream costs this shard, not the job
                log.exception("shard %s: processing failed", shard)
                reason = (
                    f"shard {shard}: stopped by an unexpected error ({type(exc).__name__}: {exc}); the samples "
                    "read before it are kept; the next run of the job retries the shard"
                )
                yield SampleError(shard, None, None, "shard", "shard_failed", reason)


def model_input_weight(record: ShardRecord) -> int:
    """A batch's size counts model inputs only: errors and shard ends ride along without taking a slot."""
    return 1 if isinstance(record, ModelInput) else 0


class OpenClipModelHandler(ModelHandler[ShardRecord, WriterRecord, OpenClipEncoder]):
    """RunInference handler: a batch of reader records -> both towers over its model inputs -> one
    ``EmbeddedChunk`` per shard in it, then the batch's other records (errors, shard ends) in their order.

    Inputs stay one element per sample: a batch runs as soon as it holds ``batch_size`` inputs, whichever
    shards they come from, while the decode threads keep going. The model loads in ``load_model`` on the
    worker; on a GPU it is shared across the SDK processes of a worker (one copy per GPU). A batch the model
    raises on becomes one ``encode_failed`` error per sample, and the job goes on.

    With ``--decode gpu`` the model is a ``DeviceDecodingEncoder``: the batch's JPEGs go to it as bytes and are
    decoded, resized and hashed on its device; a JPEG it refuses takes the CPU path here (``SamplePreparer``),
    counted and logged, so its sample is embedded (or recorded) exactly as with ``--decode cpu``.
    """

    def __init__(self, config: EncoderConfig, decode: DecodeConfig | None = None) -> None:
        share = config.device == "cuda"
        super().__init__(
            min_batch_size=config.batch_size,
            max_batch_size=config.batch_size,
            large_model=share,
            model_copies=1 if share else None,
            element_size_fn=model_input_weight,
        )
        self.config = config
        self.decode = decode or DecodeConfig()
        self._preparer: SamplePreparer | None = None  # the CPU path for refused JPEGs, made on first need

    def load_model(self) -> OpenClipEncoder:
        encoder = OpenClipEncoder.load(self.config)
        return DeviceDecodingEncoder.wrap(encoder) if self.decode.decoder == "gpu" else encoder

    def run_inference(
        self, batch: Sequence[ShardRecord], model: OpenClipEncoder, inference_args: dict[str, Any] | None = None
    ) -> Iterable[WriterRecord]:
        inputs = [item for item in batch if isinstance(item, ModelInput)]
        others = [item for item in batch if not isinstance(item, ModelInput)]
        return [*self.embed_inputs(inputs, model), *others]

    def embed_inputs(self, inputs: Sequence[ModelInput], model: OpenClipEncoder) -> list[EmbeddedChunk | SampleError]:
        """Both towers over ``inputs``: per-shard chunks, the error of a refused JPEG the CPU cannot read either,
        or an error per sample when the model raises."""
        if not inputs:
            return []
        embedded, errors = list(inputs), []
        try:
            embedded, image_emb, errors = self.embed_images(inputs, model)
            if not embedded:
                return errors
            has_text = np.array([item.tokens is not None for item in embedded], dtype=bool)
            text_emb = np.zeros_like(image_emb)
            if has_text.any():  # image-only samples (no caption, or --captions none) skip the text tower
                text_emb[has_text] = model.embed_tokens(
                    np.stack([item.tokens for item in embedded if item.tokens is not None])
                )
        except Exception as exc:  # noqa: BLE001 - the batch's samples are recorded, the job goes on
            log.exception("the encoder failed on a batch of %d samples", len(embedded))
            return [*errors, *(_count_error(error) for error in encode_failed_errors(embedded, exc))]
        similarity = np.einsum("ij,ij->i", image_emb, text_emb)
        Metrics.counter(NAMESPACE, "embedded").inc(len(embedded))
        rows = [item.row for item in embedded]
        return [*EmbeddedChunk.per_shard(rows, image_emb, text_emb, similarity, has_text), *errors]

    def embed_images(
        self, inputs: Sequence[ModelInput], model: OpenClipEncoder
    ) -> tuple[list[ModelInput], np.ndarray, list[SampleError]]:
        """(the inputs embedded, in order; their image embeddings; errors of the others).

        Inputs with pixels are embedded as they are. JPEGs left encoded go to the model's device in one call
        (``DeviceDecodingEncoder.embed_jpegs``), which fills their rows' perceptual hashes; a JPEG the device
        refuses takes the CPU path here and is embedded with the pixel inputs, or becomes its error.
        """
        on_device = [position for position, item in enumerate(inputs) if item.encoded is not None]
        if not on_device:
            return list(inputs), model.embed_pixels(np.stack([item.pixels for item in inputs])), []
        jpegs = [(inputs[p].encoded.data, inputs[p].encoded.orientation) for p in on_device]
        answer: DeviceEmbeddings = model.embed_jpegs(jpegs, self.decode.fingerprints)
        prepared: list[ModelInput | SampleError] = list(inputs)
        vectors: dict[int, np.ndarray] = {}
        phashes = answer.phashes or [None] * len(answer.decoded)  # none without fingerprints
        for i, vector, phash in zip(answer.decoded, answer.embeddings, phashes, strict=True):
            vectors[on_device[i]] = vector
            inputs[on_device[i]].row["phash"] = phash
        for i, item in self._cpu_fallbacks([inputs[p] for p in on_device], answer).items():
            prepared[on_device[i]] = item
        with_pixels = [p for p, item in enumerate(prepared) if isinstance(item, ModelInput) and item.pixels is not None]
        if with_pixels:
            pixel_emb = model.embed_pixels(np.stack([prepared[p].pixels for p in with_pixels]))
            vectors.update(zip(with_pixels, pixel_emb, strict=True))
        kept = sorted(vectors)
        errors = [_count_error(item) for item in prepared if isinstance(item, SampleError)]
        image_emb = np.stack([vectors[p] for p in kept]) if kept else np.zeros((0, 0), np.float32)
        Metrics.counter(NAMESPACE, GPU_DECODED).inc(len(answer.decoded))
        return [prepared[p] for p in kept], image_emb, errors

    def _cpu_fallbacks(
        self, encoded: Sequence[ModelInput], answer: DeviceEmbeddings
    ) -> dict[int, ModelInput | SampleError]:
        """index in ``encoded`` -> the CPU path's result, for each JPEG the device refused (counted and logged;
        never an error by itself: the sample is embedded, or recorded as ``--decode cpu`` would record it)."""
        if not answer.refused:
            return {}
        Metrics.counter(NAMESPACE, GPU_FALLBACK_REFUSED).inc(len(answer.refused))
        first = min(answer.refused)
        log.warning(
            "%d of %d JPEGs in a batch were refused by the device decoder and are decoded on CPU instead; "
            "first: shard %s sample %s: %s",
            len(answer.refused),
            len(encoded),
            encoded[first].row["shard"],
            encoded[first].row["key"],
            answer.refused[first],
        )
        if self._preparer is None:
            self._preparer = SamplePreparer(self.decode, self.config)
        return {i: self._preparer.on_cpu(encoded[i].encoded.raw) for i in sorted(answer.refused)}

    def get_num_bytes(self, batch: Sequence[ShardRecord]) -> int:
        return sum(item.nbytes for item in batch if isinstance(item, ModelInput))

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


def encode_failed_errors(inputs: Sequence[ModelInput], exc: Exception) -> Iterator[SampleError]:
    """A batch the model raised on: every sample in it is recorded with the exception."""
    for item in inputs:
        row = item.row
        yield SampleError(
            row["shard"],
            row["key"],
            None,
            STAGE_ENCODE,
            "encode_failed",
            f"shard {row['shard']}: sample {row['key']}: the encoder failed on its batch "
            f"({type(exc).__name__}: {exc}); the next run of the job does not redo it: re-run with --overwrite "
            "once the cause is fixed",
        )


@dataclass
class _OpenShard:
    """What the writer holds of a shard whose ``ShardEnd`` has not arrived yet."""

    chunks: list[EmbeddedChunk] = field(default_factory=list)
    errors: list[SampleError] = field(default_factory=list)


class WriteShardOutputs(beam.DoFn):
    """Holds each shard's chunks and errors until its ``ShardEnd``, then writes embeddings/<shard>.parquet
    (rows in tar order) and errors/<shard>.parquet (last: its presence marks a complete shard), each atomically.

    The embeddings file's footer also records where the shard came from and the job's settings
    (``resume.output_metadata``), which a resumed run checks before it reuses the file.
    """

    def __init__(self, out: str, schema: Any, total_shards: int, settings: dict[str, Any]) -> None:
        self.out = out
        self.schema = schema
        self.total_shards = total_shards
        self.settings = settings
        self.written = Metrics.counter(NAMESPACE, "shards_written")
        self.done = 0

    def start_bundle(self) -> None:
        self.open: dict[str, _OpenShard] = {}

    def process(self, record: WriterRecord) -> Iterator[dict[str, Any]]:
        if isinstance(record, ShardEnd):
            yield self.commit(record)
            return
        held = self.open.setdefault(record.shard, _OpenShard())
        if isinstance(record, EmbeddedChunk):
            held.chunks.append(record)
        else:
            held.errors.append(record)

    def commit(self, end: ShardEnd) -> dict[str, Any]:
        """Write the ended shard's two files, after checking every one of its samples reached the writer."""
        held = self.open.pop(end.shard, _OpenShard())
        embedded = EmbeddedChunk.join(end.shard, held.chunks)
        errors = sorted(held.errors, key=lambda e: (e.key is None, e.key or "", e.member or ""))
        received = len(embedded) + sum(1 for e in errors if not e.is_shard_error)
        if received != end.samples:  # a record went astray: refuse to write a shard that misses samples
            raise RuntimeError(
                f"shard {end.shard}: {end.samples} samples were read but {received} reached the writer; "
                "nothing was written for this shard"
            )
        outputs = ShardOutputs.for_shard(self.out, end.shard)
        schema = self.schema.with_metadata({**self.schema.metadata, **output_metadata(end.source, self.settings)})
        storage.write_atomic(outputs.embeddings, lambda f: pq.write_table(chunk_table(embedded, schema), f))
        storage.write_atomic(outputs.errors, lambda f: pq.write_table(errors_table(errors), f))
        self.written.inc()
        self.done += 1
        log.info(
            "shard %s: %d embedded, %d errors (%d shards written by this worker, %d in the job)",
            end.shard,
            len(embedded),
            len(errors),
            self.done,
            self.total_shards,
        )
        return {"shard": end.shard, "embedded": len(embedded), "errors": len(errors)}

    def finish_bundle(self) -> None:
        # Every reader record of a shard is emitted in the same bundle as its ShardEnd, and each step flushes
        # its buffer before the next one finishes, so nothing can be left here.
        if self.open:
            raise RuntimeError(f"shards {sorted(self.open)} ended their bundle without a ShardEnd; none was written")


class EmbedShards(beam.PTransform):
    """PCollection of ``ShardSource`` -> per-shard Parquet outputs, each committed when its shard ends;
    yields one stats dict per shard."""

    def __init__(
        self,
        encoder: EncoderConfig,
        decode: DecodeConfig,
        out: str,
        schema: Any,
        total_shards: int,
        settings: dict[str, Any],
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decode = decode
        self.writer = WriteShardOutputs(out, schema, total_shards, settings)

    def expand(self, sources: beam.PCollection) -> beam.PCollection:
        return (
            sources
            | "SpreadShards" >> beam.Reshuffle()  # the only shuffle: over the shard list, before any reading
            | "ReadAndPrepare" >> beam.ParDo(ReadAndPrepareShard(self.decode, self.encoder))
            | "Encode" >> RunInference(OpenClipModelHandler(self.encoder, self.decode))
            | "Write" >> beam.ParDo(self.writer)
        )


def run_embed_pipeline(
    sources: list[ShardSource],
    transform: EmbedShards,
    beam_args: list[str],
    test_pipeline: Any = None,
) -> dict[str, int]:
    """Run ``transform`` over ``sources`` (on Beam's in-process runner unless ``beam_args`` name one);
    return the job's counters."""
    pipeline = test_pipeline if test_pipeline is not None else make_pipeline(beam_args)
    _ = pipeline | "Shards" >> beam.Create(sources, reshuffle=False) | "Embed" >> transform
    result = pipeline.run()
    result.wait_until_finish()
    return job_counters(result, NAMESPACE)
