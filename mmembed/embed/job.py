"""The embed job from start to summary: list shards, apply the resume rule, run the Beam job, count, report."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from typing import Any

import pyarrow.parquet as pq

from mmembed import storage
from mmembed.beam import runs_locally
from mmembed.config import EmbedJobConfig, default_cpu_inference_threads
from mmembed.embed.resume import job_settings, plan_resume, read_shard_outputs
from mmembed.embed.summary import exit_status, first_error_reasons, report, summarize
from mmembed.outputs import EMBEDDINGS_DIR, ERRORS_DIR, SUMMARY_FILE, ShardOutputs, join
from mmembed.progress import Progress
from mmembed.records import ShardSource
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
    prov = full_provenance(encoder_provenance(config.encoder), config.output_dtype)
    prov["jpeg_decode"] = "exact" if config.decode.exact_decode else "reduced-scale"  # DecodeConfig.exact_decode
    prov["decoder"] = config.decode.decoder  # cpu (Pillow on the readers) or gpu (JPEGs on the model's device)
    settings = job_settings(config.decode)
    plan = plan_resume(config.out, sources, prov, settings, config.overwrite)  # may refuse: nothing changed yet
    if plan.todo and runs_locally(beam_args, test_pipeline):
        config = resolve_local_settings(config)  # torch and open_clip: only when there is work
    storage.check_writable(config.out)  # after every check that can refuse: a refused run creates nothing
    removed = sum(storage.remove_temporaries(join(config.out, d)) for d in (EMBEDDINGS_DIR, ERRORS_DIR))
    if removed:
        log.info("removed %d temporary file(s) a killed run left in %s", removed, config.out)
    log.info("%d shards, %d to embed, %d already complete", len(sources), len(plan.todo), len(plan.done))

    counters: dict[str, int] = {}
    if plan.todo:
        importing = time.monotonic()
        from mmembed.beam.embed import EmbedShards, run_embed_pipeline

        started += time.monotonic() - importing  # seconds and samples/s count the job's work, not Beam's import

        schema = embeddings_schema(prov["dim"], config.output_dtype, prov)
        transform = EmbedShards(config.encoder, config.decode, config.out, schema, len(plan.todo), settings)
        sizes = [s.size for s in plan.todo]
        total_bytes = sum(sizes) if None not in sizes else None  # bytes done / total: the ETA's basis
        with Progress("embed", len(plan.todo), "shards", rate_of="samples", size_total=total_bytes) as progress:
            if progress.enabled:
                progress.watch(CommittedShards(config.out, plan.todo))
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


class CommittedShards:
    """A ``Progress.watch`` poll: the shards of this run whose errors file (written last) has appeared, or been
    rewritten, since the run began, with their sample counts. It reads the output folder (one listing a poll,
    two footers a finished shard), so it sees every runner's workers, in this process or not, and adds nothing
    to the pipeline. (Reading the errors tables themselves on this thread raised the job's peak memory by up to
    40 MB: the footers hold enough.)"""

    REMOTE_CHECKS = 50  # old files (--overwrite, retried shards) looked up per poll on an object store

    def __init__(self, out: str, todo: list[ShardSource]) -> None:
        self.out = out
        self.pending = {shard_name(s.url): s for s in todo}
        self.before = {n: self._mtime(n) for n in sorted(self._listed())}  # files an earlier run left
        self.local = storage.is_local(out)

    def _listed(self) -> set[str]:
        urls = storage.glob(join(self.out, ERRORS_DIR, "*.parquet"))
        return {os.path.basename(url)[: -len(".parquet")] for url in urls} & self.pending.keys()

    def _mtime(self, shard: str) -> float | None:
        found = storage.info(ShardOutputs.for_shard(self.out, shard).errors)
        return found.mtime if found else None

    def __call__(self, progress: Progress) -> None:
        listed = self._listed()
        new = sorted(listed - self.before.keys())
        old = [n for n in self.before if n in listed]  # a lookup each: every one on a local disk, else a few
        checks = old if self.local or progress.closing else old[: self.REMOTE_CHECKS]
        new += [n for n in checks if self._mtime(n) != self.before[n]]
        for shard in new:
            self.before.pop(shard, None)
            source = self.pending.pop(shard)
            progress.advance(1, size=source.size or 0, samples=committed_samples(self.out, shard))
        if not self.local:  # the next poll looks up the next few
            for shard in checks:
                if shard in self.before:
                    self.before[shard] = self.before.pop(shard)


def committed_samples(out: str, shard: str) -> int:
    """The samples a committed shard accounts for, from its two footers alone: embedded rows plus the error rows
    that name a sample (a shard-level error has no key; Parquet's null count says how many)."""
    outputs = ShardOutputs.for_shard(out, shard)
    with storage.open_read(outputs.embeddings) as f:
        embedded = pq.ParquetFile(f).metadata.num_rows
    with storage.open_read(outputs.errors) as f:
        errors = pq.ParquetFile(f).metadata
    key = errors.schema.names.index("key")
    groups = [errors.row_group(i).column(key).statistics for i in range(errors.num_row_groups)]
    return embedded + errors.num_rows - sum(s.null_count for s in groups if s is not None and s.has_null_count)


def run_and_report(config: EmbedJobConfig, beam_args: list[str] | None = None, test_pipeline: Any = None) -> int:
    """Run the job, print its summary and first errors; return the exit status (0 all read, 3 incomplete)."""
    summary = run_job(config, beam_args, test_pipeline)
    report(summary, config.out)
    return exit_status(summary)
