"""``--where``: which rows of an index satisfy a condition over their columns and json metadata, run by DuckDB.

The condition is SQL, e.g. ``width >= 512 AND metadata->>'src' = 'flickr'`` or
``json_extract(metadata, '$.n')::INT > 3``, over the ids table's columns (``COLUMNS``). The user's text is
never spliced into a statement: DuckDB parses it as ONE expression (``duckdb.SQLExpression`` refuses a second
statement, a ``;``, a list of expressions or a modifier such as ``LIMIT``) and it is applied as the filter of a
relation over the ids table, registered from Arrow (no copy). The connection holds no tables, has external
access (files, network, extension downloads) disabled and its configuration locked, so a subquery can read
nothing but constants. A condition must be boolean; a row where it is NULL does not match.

Cost: one columnar pass over the rows it names (about 10 ms per million rows for a numeric comparison, 100-200
ms for a json field on the 2-core dev machine); ``mmembed.search.Searcher`` keeps recent results.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa

from mmembed.config import ConfigError
from mmembed.index.reader import SAMPLE_COLUMNS

if TYPE_CHECKING:
    from mmembed.index.load import IndexSet

# What a condition can name (the ids table's columns), for help and error messages.
COLUMNS = {
    "key": "text",
    "shard": "text",
    "offset": "integer",
    "caption": "text, NULL for an image-only sample",
    "url": "text",
    "has_text": "boolean: the sample has a caption",
    "metadata": "the sample's json member as JSON text: metadata->>'field', json_extract(metadata, '$.n')::INT",
    "width": "integer, pixels",
    "height": "integer, pixels",
    "similarity": "float, cosine(image, caption); NULL for an image-only sample",
    "row_id": "integer",
}
EXAMPLE = "width >= 512 AND metadata->>'src' = 'flickr'"
_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "lock_configuration": True,
}
_UNKNOWN = re.compile(r'Referenced column "(?P<name>[^"]*)" not found')
_lock = threading.Lock()
_database: duckdb.DuckDBPyConnection | None = None


def rows_matching(index: IndexSet, expr: str) -> np.ndarray:
    """Which rows of ``index`` satisfy ``expr``: a bool per row id. A ConfigError names what is wrong in
    ``expr`` (syntax, an unknown column with the list of known ones, a type), or the rebuild an index needs
    whose ids file predates the column ``expr`` names."""
    matched = row_ids_matching(index.ids, expr, f"index {index.url}")
    mask = np.zeros(index.count, dtype=bool)
    mask[matched] = True
    return mask


def row_ids_matching(table: pa.Table, expr: str, where: str = "the index") -> np.ndarray:
    """The ``row_id`` values of ``table`` (an ids table) whose row satisfies ``expr``, in table order;
    ``where`` names the table in errors."""
    condition = parse(expr)
    cursor = _cursor()
    relation = cursor.from_arrow(table)
    try:
        kind = str(relation.project(condition).types[0])
        if kind != "BOOLEAN":
            raise ConfigError(
                f"--where {expr!r} has type {kind}, not a condition (true/false); e.g. --where {EXAMPLE!r}"
            )
        found = relation.filter(condition).project(duckdb.ColumnExpression("row_id")).fetchnumpy()["row_id"]
    except duckdb.BinderException as exc:
        raise _binder_error(expr, exc, table.schema.names, where) from None
    except duckdb.Error as exc:
        raise ConfigError(f"--where {expr!r}: {_reason(exc)}") from None
    finally:
        cursor.close()
    return np.asarray(found, dtype=np.int64)


def parse(expr: str) -> duckdb.Expression:
    """``expr`` parsed by DuckDB as exactly one expression; a ConfigError saying why it is not one."""
    text = (expr or "").strip()
    if not text:
        raise ConfigError(f"--where is empty; give a condition, e.g. --where {EXAMPLE!r}")
    try:
        return duckdb.SQLExpression(text)
    except duckdb.Error as exc:
        raise ConfigError(
            f"--where {expr!r} is not one SQL condition ({_reason(exc)}); e.g. --where {EXAMPLE!r}"
        ) from None


def _binder_error(expr: str, exc: duckdb.Error, present: list[str], where: str) -> ConfigError:
    """An unknown column (listing the known ones), a column the ids file predates (naming the rebuild), or
    another binding failure (a function or type that does not fit) in ``expr``."""
    match = _UNKNOWN.search(str(exc))
    if match is None:
        return ConfigError(f"--where {expr!r}: {_reason(exc)}")
    name = match.group("name")
    if name.lower() in SAMPLE_COLUMNS and name.lower() not in present:
        return ConfigError(
            f"--where {expr!r}: {where} has no {name!r} column (its ids file was written before --where could "
            f"filter on {', '.join(SAMPLE_COLUMNS)}); fix: rebuild the index "
            "(mmembed index --embeddings DIR --out INDEX --overwrite)"
        )
    return ConfigError(
        f"--where {expr!r}: unknown column {name!r}; the columns are {', '.join(COLUMNS)}, with json fields as "
        "metadata->>'field' (text values take single quotes: caption = 'red car')"
    )


def _reason(exc: Exception) -> str:
    """DuckDB's message without its position diagram, which quotes the internal query rather than ``expr``."""
    return str(exc).split("\n\nLINE ", 1)[0].split("\nLINE ", 1)[0].strip()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A connection of its own (thread-safe use) to the shared in-memory database with external access off."""
    global _database
    with _lock:
        if _database is None:
            _database = duckdb.connect(":memory:", config=_CONFIG)
        return _database.cursor()
