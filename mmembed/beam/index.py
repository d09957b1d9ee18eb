"""Beam pieces of the sharded index build: each part (a group of embeddings files) is one parallel work item."""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from mmembed.index.sharded import Part, PartJob, add_part

NAMESPACE = "mmembed"  # the embed job's counter namespace too


class AddPartFn(beam.DoFn):
    """Part -> its filled copy of each trained index + exact top-k of the tuning queries, written to the work dir."""

    def __init__(self, job: PartJob) -> None:
        self.job = job

    def process(self, part: Part) -> Iterator[tuple[int, int]]:
        add_part(self.job, part)  # idempotent: a retried part whose outputs exist is skipped
        Metrics.counter(NAMESPACE, "index_parts").inc()
        Metrics.counter(NAMESPACE, "index_vectors").inc(part.rows)
        yield part.part_id, part.rows


class AddParts(beam.PTransform):
    """Parts -> (part_id, rows) once each part's files are written; reshuffled so parts spread over workers."""

    def __init__(self, job: PartJob) -> None:
        super().__init__()
        self.job = job

    def expand(self, parts: beam.PCollection) -> beam.PCollection:
        return parts | "Spread" >> beam.Reshuffle() | "Add" >> beam.ParDo(AddPartFn(self.job))
