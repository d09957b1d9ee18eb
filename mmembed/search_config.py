"""SearchConfig: the queries ``mmembed search`` runs over one index dir, and how. Light: ``--help`` imports it."""

from __future__ import annotations

from dataclasses import dataclass

from mmembed.config import DEFAULT_TEXT_WEIGHT, DEVICES, SEARCH_MODES, TARGETS, ConfigError
from mmembed.options import option

WHERE_HELP = (
    "only samples matching this SQL condition over key, shard, caption, url, width, height, similarity, has_text "
    "and metadata, e.g. \"width >= 512 AND metadata->>'src' = 'flickr'\""
)


@dataclass(frozen=True)
class SearchConfig:
    """Search ``index_dir`` with a text (``query`` or ``text``), the lines of ``queries_file``, or ``image``
    files (with ``text``: a composed query, ``text_weight`` of it from the text): the ``k`` best on the
    ``target`` index, among the samples ``where`` holds for. ``model`` (with ``pretrained`` / ``checkpoint``)
    replaces the recorded query model, checked against the index; ``checkpoint`` alone relocates it."""

    index_dir: str = option(
        flag="--index", help="index dir written by `mmembed index` (path or s3:// gs:// URL; cached locally)"
    )
    query: str | None = option(
        None, positional=True, metavar="QUERY", help="text query (or use --text, --image, --queries-file)"
    )
    text: str | None = option(None, metavar="TEXT", help="text query; with --image, the text of a composed query")
    image: tuple[str, ...] = option((), metavar="FILE", help="query image files or URLs (several values, repeatable)")
    text_weight: float = option(DEFAULT_TEXT_WEIGHT, metavar="W", help="weight of --text in a composed query")
    queries_file: str | None = option(None, metavar="FILE", help="text queries, one per line, searched in one batch")
    k: int = option(10, flag="-k", metavar="N", help="results per query")
    target: str = option(
        "image", choices=TARGETS, help="search images (image-only samples included) or captions (samples with one)"
    )
    where: str | None = option(None, metavar="EXPR", help=WHERE_HELP)
    mode: str = option(
        "vector",
        choices=SEARCH_MODES,
        help='text queries: by embedding, by keywords in captions (BM25; "phrase", prefix*), or both fused',
    )
    model: str | None = option(None, help="override the recorded query model (checked against the index)")
    pretrained: str | None = option(None, help="with --model: its pretrained tag")
    checkpoint: str | None = option(None, help="local checkpoint of the recorded model (if moved)")
    device: str = option("auto", choices=DEVICES, help="where queries are encoded")

    def __post_init__(self) -> None:
        object.__setattr__(self, "image", (self.image,) if isinstance(self.image, str) else tuple(self.image))
        if self.text is not None and self.query is not None:
            raise ConfigError("give the text query once: as the positional argument or with --text")
        if not (self.text_query or self.image or self.queries_file):
            raise ConfigError("no query: give a text, --image FILE or --queries-file FILE")
        if self.image and self.mode != "vector":
            raise ConfigError(f"--mode {self.mode} ranks text queries; an --image query is searched by its embedding")
        for flag, value, choices in (
            ("--target", self.target, TARGETS),
            ("--mode", self.mode, SEARCH_MODES),
            ("--device", self.device, DEVICES),
        ):
            if value not in choices:
                raise ConfigError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")

    @property
    def text_query(self) -> str | None:
        """The text searched for (alone, or the text of a composed query with ``image``)."""
        return self.text if self.text is not None else self.query
