"""Beam's own pipeline option names, for checking job files before a pipeline is built."""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions


def beam_option_actions() -> dict[str, list[argparse.Action]]:
    """Every Beam pipeline option by dest (and by long flag name), from Beam's own option parser."""
    captured: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=captured.append)
    by_name: dict[str, list[argparse.Action]] = {}
    for action in captured[0]._actions:
        if not action.option_strings or action.dest == "help":
            continue
        names = {action.dest} | {s[2:] for s in action.option_strings if s.startswith("--")}
        for name in names:
            by_name.setdefault(name, []).append(action)
    return by_name
