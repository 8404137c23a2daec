"""The one loader of planning's bundled tables (``core/data/*.csv``): figures with a source.

A table is parsed once per process; every problem is a ``ConfigError`` naming the file and line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from importlib import resources
from types import MappingProxyType
from typing import TypeVar

from core.errors import ConfigError

__all__ = ["load_table"]

T = TypeVar("T")


def load_table(
    filename: str,
    parse: Callable[[str, Mapping[str, str]], T],
    *,
    column: str,
    what: str,
    key: Callable[[str], str] = str,
) -> Mapping[str, T]:
    """Every row of ``core/data/<filename>`` through ``parse(where, row)``, by ``key(row[column])``.

    Args:
        filename: the CSV file under ``core/data``; its first line names the columns.
        parse: builds one entry; ``where`` ("<file> line <n>") is for its own errors.
        column: the column that names each entry.
        what: what an entry is, for the duplicate error ("accelerator", "backend").
        key: how a name is looked up (e.g. normalised); two rows with one key are an error.

    Raises:
        ConfigError: a row is missing a column or holds a value that does not parse, or two rows
            share a key.
    """
    text = resources.files("core").joinpath("data", filename).read_text("utf-8")
    table: dict[str, T] = {}
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        where = f"{filename} line {line}"
        try:
            entry = parse(where, row)
            name = row[column].strip()
        except (KeyError, ValueError, AttributeError) as e:
            raise ConfigError(f"{where}: {type(e).__name__}: {e}") from None
        if key(name) in table:
            raise ConfigError(f"{where}: duplicate {what} {name!r}")
        table[key(name)] = entry
    return MappingProxyType(table)
