"""Built-in step families. Importing this package registers every kind."""

from dataforge.steps import audit, clean, dedup, format, leakage, parse, sources, split, timestamps  # noqa: F401
