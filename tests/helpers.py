"""Test helpers: run the embed job on Beam's offline in-process runner and read its outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline

from mmembed.config import DecodeConfig, EmbedJobConfig, EncoderConfig
from mmembed.embed.job import run_job


def offline_test_pipeline() -> TestPipeline:
    """A TestPipeline on FnApiRunner: Beam's default local runner would try to download Prism."""
    return TestPipeline(runner=FnApiRunner(), options=None, blocking=True)


def embed(
    shards: list[str] | tuple[str, ...],
    out: Path,
    encoder: EncoderConfig,
    decode: DecodeConfig | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the embed job through a TestPipeline and return its summary."""
    config = EmbedJobConfig(
        shards=tuple(shards), out=str(out), encoder=encoder, decode=decode or DecodeConfig(), overwrite=overwrite
    )
    return run_job(config, test_pipeline=offline_test_pipeline())


def read_dir(folder: Path) -> pa.Table:
    """All Parquet files of an output folder as one table, in file-name order."""
    files = sorted(folder.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})
