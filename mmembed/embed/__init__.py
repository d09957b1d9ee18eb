"""The embed job's driver: options, resume rule, counting and summary (the Beam graph is in mmembed/beam/embed.py).

``mmembed embed`` and ``python -m pipelines.embed`` both come here: ``job.run_job(config)`` lists the shards,
keeps the ones whose outputs are complete and were made the same way, runs the Beam job over the rest and
writes ``summary.json``.
"""
