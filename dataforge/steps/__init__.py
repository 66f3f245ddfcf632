"""Built-in step families. Importing this package registers every kind."""

from dataforge.steps import (  # noqa: F401
    audit,
    clean,
    critique,
    dedup,
    feedback,
    format,
    generate,
    leakage,
    parse,
    preference,
    rollout,
    score,
    sources,
    split,
    timestamps,
    verify,
)
