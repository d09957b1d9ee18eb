"""The embed job from start to summary: list shards, apply the resume rule, run the Beam job, count, report."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from typing import Any

from mmembed import storage
from mmembed.config import EmbedJobConfig, default_cpu_inference_threads
from mmembed.embed.options import add_embed_arguments, config_from_args
from mmembed.embed.resume import job_settings, plan_resume, read_shard_outputs
from mmembed.embed.summary import exit_status, first_error_reasons, report, summarize
from mmembed.outputs import EMBEDDINGS_DIR, ERRORS_DIR, SUMMARY_FILE, join
from mmembed.shards import list_shards, shard_name, stat_shards

log = logging.getLogger(__name__)


def resolve_local_settings(config: EmbedJobConfig) -> EmbedJobConfig:
    """On the local runner: fail fast when CUDA is requested but absent or the pretrained weights cannot be
    fetched, pin 'auto' to what this machine has (so the model handler knows to share one model copy per GPU)
    and give CPU inference the cores the decode threads leave. Remote workers resolve these themselves."""
    from mmembed.encoders.openclip import ensure_weights, resolve_device

    device = resolve_device(config.encoder.device)
    ensure_weights(config.encoder)
    encoder = replace(config.encoder, device=device)
    if device == "cpu" and encoder.torch_threads is None:
        encoder = replace(encoder, torch_threads=default_cpu_inference_threads(config.decode.threads))
    return replace(config, encoder=encoder)


def run_job(config: EmbedJobConfig, beam_args: list[str] | None = None, test_pipeline: Any = None) -> dict[str, Any]:
    """Embed every shard that has no complete, matching outputs (all of them with ``overwrite``); return the
    summary, which is also written to ``<out>/summary.json``."""
    from mmembed.encoders.provenance_cache import encoder_provenance
    from mmembed.schema import embeddings_schema, full_provenance

    started = time.monotonic()
    beam_args = beam_args or []
    sources = stat_shards(list_shards(config.shards))
    storage.check_writable(config.out)
    prov = full_provenance(encoder_provenance(config.encoder), config.output_dtype)
    prov["jpeg_decode"] = "exact" if config.decode.exact_decode else "reduced-scale"  # DecodeConfig.exact_decode
    prov["decoder"] = config.decode.decoder  # cpu (Pillow on the readers) or gpu (JPEGs on the model's device)
    settings = job_settings(config.decode)
    plan = plan_resume(config.out, sources, prov, settings, config.overwrite)  # may refuse: nothing changed yet
    removed = sum(storage.remove_temporaries(join(config.out, d)) for d in (EMBEDDINGS_DIR, ERRORS_DIR))
    if removed:
        log.info("removed %d temporary file(s) a killed run left in %s", removed, config.out)
    log.info("%d shards, %d to embed, %d already complete", len(sources), len(plan.todo), len(plan.done))

    counters: dict[str, int] = {}
    if plan.todo:  # torch, open_clip and Beam are imported only when there is work
        if test_pipeline is not None or not any(a.startswith("--runner") for a in beam_args):
            config = resolve_local_settings(config)
        importing = time.monotonic()
        from mmembed.beam.embed import EmbedShards, run_embed_pipeline

        started += time.monotonic() - importing  # seconds and samples/s count the job's work, not Beam's import

        schema = embeddings_schema(prov["dim"], config.output_dtype, prov)
        transform = EmbedShards(config.encoder, config.decode, config.out, schema, len(plan.todo), settings)
        counters = run_embed_pipeline(plan.todo, transform, beam_args, test_pipeline)

    names = [shard_name(s.url) for s in sources]
    counts = [plan.done.get(n) or read_shard_outputs(config.out, n).counts for n in names]
    processed_samples = sum(c.embedded + sum(c.sample_errors.values()) for c in counts if c.shard not in plan.done)
    summary = summarize(
        counts, processed_shards=len(plan.todo), processed_samples=processed_samples, seconds=time.monotonic() - started
    )
    summary["beam_counters"] = counters
    summary["first_errors"] = first_error_reasons(config.out, counts)
    summary["provenance"] = prov
    storage.write_atomic(join(config.out, SUMMARY_FILE), lambda f: f.write(json.dumps(summary, indent=2).encode()))
    return summary


def run_and_report(config: EmbedJobConfig, beam_args: list[str] | None = None, test_pipeline: Any = None) -> int:
    """Run the job, print its summary and first errors; return the exit status (0 all read, 3 incomplete)."""
    summary = run_job(config, beam_args, test_pipeline)
    report(summary, config.out)
    return exit_status(summary)


def run(argv: list[str] | None = None, test_pipeline: Any = None) -> int:
    """``python -m pipelines.embed``: parse our options, pass the rest to Beam, run and report."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.embed", description=__doc__)
    add_embed_arguments(parser)
    args, beam_args = parser.parse_known_args(argv)
    return run_and_report(config_from_args(args), beam_args, test_pipeline)
