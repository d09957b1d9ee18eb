"""Reading a finished Beam job's counters, the same way for every job."""

from __future__ import annotations

from collections import Counter
from typing import Any

from apache_beam.metrics.metric import MetricsFilter


def job_counters(result: Any, namespace: str) -> dict[str, int]:
    """The job's Beam counters in ``namespace`` by name, committed values where the runner has them."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except (NotImplementedError, AttributeError):  # some runners expose no metrics
        return {}
    totals: Counter = Counter()
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += value or 0
    return dict(sorted(totals.items()))
