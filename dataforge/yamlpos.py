"""YAML loading that remembers the line of every key, so errors can point into the recipe file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dataforge.errors import RecipeError

Path_ = tuple[str | int, ...]


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[Path_, int]]:
    """Parse ``path`` and return ``(data, lines)``; ``lines`` maps a key path like
    ``("steps", "clean", "fields")`` to the 1-based line where that key (or item) starts."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError("recipe file not found", file=str(path)) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"YAML syntax error: {problem}", file=str(path), line=line) from None
    lines: dict[Path_, int] = {}
    if node is None:
        return None, lines
    return _construct(node, (), lines, str(path)), lines


def _construct(node: yaml.Node, at: Path_, lines: dict[Path_, int], file: str) -> Any:
    lines.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                raise RecipeError(f"duplicate key '{key}'", file=file, line=key_node.start_mark.line + 1)
            lines[(*at, key)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, (*at, key), lines, file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*at, i), lines, file) for i, item in enumerate(node.value)]
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        raise RecipeError(f"a mapping key must be a plain value, not a {node.id}", line=node.start_mark.line + 1)
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()
