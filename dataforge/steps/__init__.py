"""Built-in step families. Importing this package registers every kind."""

from dataforge.steps import clean, format, parse, sources, split  # noqa: F401
