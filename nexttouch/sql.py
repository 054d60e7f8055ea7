"""SQL text for DuckDB queries built from names and values: quoted so that no name or value can end them."""

from __future__ import annotations


def identifier(name: str) -> str:
    """A column name as a quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """A text value (a path, a key) as a quoted string literal."""
    return "'" + text.replace("'", "''") + "'"
