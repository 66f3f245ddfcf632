"""A build setting given by a command-line option or, failing that, an environment variable."""

from __future__ import annotations

import os
from collections.abc import Sequence

from dataforge.errors import DataforgeError


def given_setting(value: object | None, option: str, env: str) -> tuple[str, str] | None:
    """(the setting as text, where it came from): ``value`` (given by ``option``) if not None,
    else ``$env`` if set and not blank; None when neither gives one."""
    if value is not None:
        return str(value), option
    from_env = os.environ.get(env, "").strip()
    return (from_env, f"${env}") if from_env else None


def chosen_setting(value: str | None, option: str, env: str, choices: Sequence[str], what: str) -> str | None:
    """``given_setting``, checked to be one of ``choices`` (an error names where it came from and
    the ``what`` it may be)."""
    given = given_setting(value, option, env)
    if given is None:
        return None
    chosen, where = given
    if chosen not in choices:
        raise DataforgeError(f"{where} is {chosen!r}: {what} {', '.join(choices)}")
    return chosen
