"""Benchmark scripts (they print figures, they are not tests) and the harness they share."""
