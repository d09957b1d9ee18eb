"""The embed job: WebDataset shards -> OpenCLIP image + text embeddings -> per-shard Parquet.

Run it with ``mmembed embed`` or ``python -m pipelines.embed``; options not listed here are
standard Beam pipeline options (``--runner DataflowRunner --project ...``) and pass through.
Without ``--runner`` the job runs on Beam's in-process FnApiRunner, which needs no download.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter

from mmembed.beam import filesystem
from mmembed.beam.embed import NAMESPACE, EmbedShards
from mmembed.beam.runner import make_pipeline
from mmembed.config import (
    DEFAULT_MODEL,
    DEVICES,
    OUTPUT_DTYPES,
    PRECISIONS,
    DecodeConfig,
    EmbedJobConfig,
    EncoderConfig,
    default_cpu_inference_threads,
)
from mmembed.encoders.openclip import embedding_dim, model_of_checkpoint, provenance, resolve_device
from mmembed.outputs import SUMMARY_FILE, ShardCounts, ShardOutputs, join, summarize
from mmembed.schema import embeddings_schema, full_provenance
from mmembed.shards import shard_name

log = logging.getLogger(__name__)


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """The embed job's own options (shared by ``mmembed embed`` and ``python -m pipelines.embed``)."""
    parser.add_argument("--shards", nargs="+", required=True, help="shard paths, globs or {000..099} patterns")
    parser.add_argument("--out", required=True, help="output directory (local, gs:// or s3://)")
    parser.add_argument(
        "--model",
        help=f"open_clip model name or local-dir:/path (default: the model a --checkpoint from `mmembed train` "
        f"was trained as, else {DEFAULT_MODEL})",
    )
    parser.add_argument("--pretrained", help="open_clip pretrained tag, e.g. laion2b_s34b_b79k (needs a download)")
    parser.add_argument("--checkpoint", help="local open_clip checkpoint file for --model")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument(
        "--precision", default="auto", choices=PRECISIONS, help="autocast dtype (auto: bf16/fp16 on GPU)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0, help="init seed for models without weights")
    parser.add_argument(
        "--torch-threads",
        type=int,
        help="CPU inference threads (default on the local runner: the cores the decode threads leave, >= 1)",
    )
    parser.add_argument("--decode-threads", type=int, help="decode/resize threads per worker (default: min(4, cores))")
    parser.add_argument("--output-dtype", default="float32", choices=OUTPUT_DTYPES)
    parser.add_argument("--caption-key", default="txt", help="tar member extension that holds the caption")
    parser.add_argument("--max-image-pixels", type=int, default=DecodeConfig.max_image_pixels)
    parser.add_argument("--overwrite", action="store_true", help="redo shards whose outputs already exist")


def config_from_args(args: argparse.Namespace) -> EmbedJobConfig:
    return EmbedJobConfig(
        shards=tuple(args.shards),
        out=args.out,
        encoder=EncoderConfig(
            model=args.model or model_of_checkpoint(args.checkpoint) or DEFAULT_MODEL,
            pretrained=args.pretrained,
            checkpoint=args.checkpoint,
            device=args.device,
            precision=args.precision,
            batch_size=args.batch_size,
            seed=args.seed,
            torch_threads=args.torch_threads,
        ),
        decode=DecodeConfig(
            caption_key=args.caption_key,
            max_image_pixels=args.max_image_pixels,
            **({"threads": args.decode_threads} if args.decode_threads else {}),
        ),
        output_dtype=args.output_dtype,
        overwrite=args.overwrite,
    )


# Shard-level failures that may be transient (a read that failed, an unexpected exception): a re-run retries them.
RETRIED_SHARD_ERRORS = ("unreadable_shard", "shard_failed")


def completed_counts(out: str, shard: str) -> ShardCounts | None:
    """The counts of a finished shard, or None when it must be (re)done: an output is missing (the errors file
    is written last, so it marks a finished shard) or the shard failed as a whole for a reason worth retrying."""
    outputs = ShardOutputs.for_shard(out, shard)
    if not (filesystem.exists(outputs.errors) and filesystem.exists(outputs.embeddings)):
        return None
    counts = read_counts(out, shard)
    return None if any(code in RETRIED_SHARD_ERRORS for code in counts.shard_errors) else counts


def read_counts(out: str, shard: str) -> ShardCounts:
    """Count what a shard's outputs hold, reading only the embeddings footer and the small errors file."""
    outputs = ShardOutputs.for_shard(out, shard)
    counts = ShardCounts(shard)
    with filesystem.open_read(outputs.embeddings) as f:
        counts.embedded = pq.ParquetFile(f).metadata.num_rows
    with filesystem.open_read(outputs.errors) as f:
        errors = pq.read_table(f, columns=["key", "code"]).to_pylist()
    counts.sample_errors = Counter(e["code"] for e in errors if e["key"] is not None)
    counts.shard_errors = Counter(e["code"] for e in errors if e["key"] is None)
    return counts


def job_counters(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The job's Beam counters (namespace ``mmembed``) by name, committed values where the runner has them."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except (NotImplementedError, AttributeError):  # some runners expose no metrics
        return {}
    totals: Counter = Counter()
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += value or 0
    return dict(sorted(totals.items()))


def run_job(config: EmbedJobConfig, beam_args: list[str] | None = None, test_pipeline: Any = None) -> dict[str, Any]:
    """Embed every shard whose outputs are missing (all of them with ``overwrite``); return the summary."""
    started = time.monotonic()
    beam_args = beam_args or []
    local = test_pipeline is not None or not any(a.startswith("--runner") for a in beam_args)
    if local:
        # Fail fast when CUDA is requested but absent; pin 'auto' to what this machine has, so the
        # model handler knows to share one model copy per GPU. Remote workers resolve it themselves.
        device = resolve_device(config.encoder.device)
        config = replace(config, encoder=replace(config.encoder, device=device))
        if device == "cpu" and config.encoder.torch_threads is None:
            threads = default_cpu_inference_threads(config.decode.threads)
            config = replace(config, encoder=replace(config.encoder, torch_threads=threads))
    urls = filesystem.list_shards(config.shards)
    filesystem.check_writable(config.out)
    done = {} if config.overwrite else {shard_name(u): completed_counts(config.out, shard_name(u)) for u in urls}
    todo = [u for u in urls if done.get(shard_name(u)) is None]
    log.info("%d shards, %d to embed, %d already complete", len(urls), len(todo), len(urls) - len(todo))

    prov = full_provenance(provenance(config.encoder), config.output_dtype)
    schema = embeddings_schema(embedding_dim(config.encoder), config.output_dtype, prov)
    counters: dict[str, int] = {}
    if todo:
        pipeline = test_pipeline if test_pipeline is not None else make_pipeline(beam_args)
        _ = (
            pipeline
            | "Shards" >> beam.Create(todo, reshuffle=False)  # EmbedShards spreads them itself
            | "Embed" >> EmbedShards(config.encoder, config.decode, config.out, schema, len(todo))
        )
        result = pipeline.run()
        result.wait_until_finish()
        counters = job_counters(result)

    counts = [done.get(shard_name(u)) or read_counts(config.out, shard_name(u)) for u in urls]  # skipped: read once
    redone = {shard_name(u) for u in todo}
    processed_samples = sum(c.embedded + sum(c.sample_errors.values()) for c in counts if c.shard in redone)
    summary = summarize(
        counts, processed_shards=len(todo), processed_samples=processed_samples, seconds=time.monotonic() - started
    )
    summary["beam_counters"] = counters
    summary["provenance"] = prov
    filesystem.write_atomic(join(config.out, SUMMARY_FILE), lambda f: f.write(json.dumps(summary, indent=2).encode()))
    return summary


def run(argv: list[str] | None = None, test_pipeline: Any = None) -> dict[str, Any]:
    """Entry point: parse our options, pass the rest to Beam, run, print the summary."""
    parser = argparse.ArgumentParser(prog="mmembed embed", description=__doc__)
    add_embed_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    summary = run_job(config_from_args(args), beam_args, test_pipeline)
    print(json.dumps({k: v for k, v in summary.items() if k != "provenance"}, indent=2))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()
