"""Pipeline construction shared by every job: Beam options pass through, offline local runner by default."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner


def make_pipeline(beam_args: list[str]) -> beam.Pipeline:
    """A pipeline on the given Beam options; Beam's in-process FnApiRunner unless ``--runner`` is set.

    Beam's default local runner would download a Prism binary, which an offline machine cannot.
    """
    options = PipelineOptions(beam_args)
    options.view_as(SetupOptions).save_main_session = False
    if options.get_all_options().get("runner"):
        return beam.Pipeline(options=options)
    return beam.Pipeline(runner=FnApiRunner(), options=options)
