"""Built-in step families, one module each. ``load_builtin()`` imports (and so registers) every
kind; the engine calls it on its first registry lookup. Importing one module (``dataforge.steps.
dedup``, say) registers that family alone, without paying for the imports of the others."""

import importlib

FAMILIES = (
    "audit",
    "clean",
    "critique",
    "dedup",
    "feedback",
    "format",
    "generate",
    "leakage",
    "parse",
    "preference",
    "rollout",
    "score",
    "sources",
    "split",
    "timestamps",
    "verify",
)


def load_builtin() -> None:
    """Import every built-in step module, registering its kinds (idempotent)."""
    for family in FAMILIES:
        importlib.import_module(f"dataforge.steps.{family}")
