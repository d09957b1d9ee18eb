"""Sub-commands of ``mmembed``: each module registers its parsers with a handler ``(args, extra) -> exit code``."""
