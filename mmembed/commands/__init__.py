"""Command handlers of ``mmembed``: the stages' handlers (``mmembed.stages`` builds their parsers from the
stage configs) and the ``run`` and ``demo`` commands, which register their own parsers."""
