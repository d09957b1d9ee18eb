"""Apache Beam wrappers: the only part of mmembed that imports apache_beam (this module itself does not)."""

from __future__ import annotations

from typing import Any


def runs_locally(beam_args: list[str], test_pipeline: Any = None) -> bool:
    """Whether a job runs on this machine (Beam's in-process runner, or a test's pipeline) rather than on the
    ``--runner`` its Beam options name: only then are device and weights resolved by the launching process."""
    return test_pipeline is not None or not any(arg.startswith("--runner") for arg in beam_args)
