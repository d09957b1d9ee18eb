"""Beam pieces of the sharded index build: each part (a group of embeddings files) is one parallel work item.

The graph holds paths only (the ``PartJob``'s work dir, each ``Part``'s file URLs): each worker fetches the
trained indexes and tuning queries from the work dir once, in ``setup``, however many parts it adds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from mmembed.index.sharded import Part, PartInputs, PartJob, add_part, part_inputs

NAMESPACE = "mmembed"  # the embed job's counter namespace too


class AddPartFn(beam.DoFn):
    """Part -> its filled copy of each trained index + exact top-k of the tuning queries, written to the work dir."""

    def __init__(self, job: PartJob) -> None:
        self.job = job
        self._inputs: PartInputs | None = None
        self._fetched: contextlib.ExitStack | None = None

    def setup(self) -> None:
        """Fetch the trained indexes and tuning queries from storage, once per DoFn instance."""
        self._fetched = contextlib.ExitStack()
        self._inputs = self._fetched.enter_context(part_inputs(self.job))

    def teardown(self) -> None:
        """Remove the local copies of the trained indexes."""
        if self._fetched is not None:
            self._fetched.close()

    def process(self, part: Part) -> Iterator[tuple[int, int]]:
        add_part(self.job, part, self._inputs)  # idempotent: a retried part whose outputs exist is skipped
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
