"""Error types. Every error a user can cause names the file, the step and the key it is about."""

from __future__ import annotations


class DataforgeError(Exception):
    """Base class of every error dataforge raises on purpose (the CLI prints these without a traceback)."""


class RecipeError(DataforgeError):
    """A recipe that cannot be planned: bad YAML, unknown kind or key, bad inputs, column mismatch.

    The message reads ``<file>:<line>: step '<step>', key '<key>': <what is wrong>`` with each part
    present where it is known.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        step: str | None = None,
        key: str | None = None,
    ) -> None:
        self.file, self.line, self.step, self.key, self.detail = file, line, step, key, message
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        about = []
        if step:
            about.append(f"step '{step}'")
        if key:
            about.append(f"key '{key}'")
        prefix = ", ".join(about)
        super().__init__(f"{where}{prefix + ': ' if prefix else ''}{message}")


class StepError(DataforgeError):
    """A step that failed while running (bad data, a malformed line, an empty input)."""

    def __init__(self, step: str, message: str) -> None:
        self.step, self.detail = step, message
        super().__init__(f"step '{step}': {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # pickled whole (from a Ray worker)
        return (StepError, (self.step, self.detail))


class DataError(DataforgeError):
    """Bad data found while a step runs (the runner adds the step's name)."""


class OutputDirError(DataforgeError):
    """An output directory that dataforge must not write into."""
