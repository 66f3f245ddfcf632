"""A build setting given by a command-line option or, failing that, an environment variable."""

from __future__ import annotations

import os
from collections.abc import Sequence

from dataforge.errors import DataforgeError


def chosen_setting(value: str | None, option: str, env: str, choices: Sequence[str], what: str) -> str | None:
    """``value`` (given by ``option``) if not None, else ``$env`` if set and not blank, checked to be
    one of ``choices`` (an error names where it came from and the ``what`` it may be); None when
    neither gives one."""
    for given, where in ((value, option), (os.environ.get(env, "").strip() or None, f"${env}")):
        if given is not None:
            if given not in choices:
                raise DataforgeError(f"{where} is {given!r}: {what} {', '.join(choices)}")
            return given
    return None
