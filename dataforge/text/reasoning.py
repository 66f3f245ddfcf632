"""The reasoning format ``<think>…</think><answer>…</answer>``, written and read in one place
(the ``format.reasoning`` step writes it; verifiers and GRPO rewards read it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # polars only for the step that writes the format: graders (GRPO rewards) run without it
    import polars as pl

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
REASONING_RE = r"(?s)^\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*$"


def reasoning_expr(think: pl.Expr, answer: pl.Expr) -> pl.Expr:
    """``<think>\\n{think}\\n</think>\\n<answer>{answer}</answer>`` as a polars expression."""
    import polars as pl

    return pl.concat_str(
        pl.lit(THINK_OPEN + "\n"), think, pl.lit("\n" + THINK_CLOSE + "\n" + ANSWER_OPEN), answer, pl.lit(ANSWER_CLOSE)
    )


# The system-prompt instruction of ``generate`` with ``reasoning: true``.
REASONING_INSTRUCTION = (
    "Think through the problem step by step inside <think></think> tags, then give only the final "
    "answer inside <answer></answer> tags: <think>\n…\n</think>\n<answer>…</answer>"
)


def split_reasoning(text: str) -> tuple[str | None, str | None]:
    """``(think, answer)`` of a completion in the reasoning format, or ``(None, None)``: one
    think block, then one answer block that states something, nothing around them but
    whitespace. A tag inside either block ("…</think>…</think>", two answers) is not the format:
    matched lazily, the pattern would take "<answer>1</answer><answer>2</answer>" as one answer.
    An empty or blank answer block is not the format either: it gives no answer, and a format
    reward that paid for it would teach a policy to give none."""
    import re

    m = re.match(REASONING_RE, text or "")
    if m is None or not m.group(2).strip() or any(tag in m.group(k) for k in (1, 2) for tag in _TAGS):
        return None, None
    return m.group(1).strip(), m.group(2).strip()


_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def after_thinking(text: str | None) -> str | None:
    """A judge's answer past its reasoning: what follows the last ``</think>`` (DeepSeek-R1, Qwen3
    and other thinking models reason before they answer, trying verdicts and scores on the way);
    None while a ``<think>`` never closes (cut at ``max_tokens``: no answer yet)."""
    text = text or ""
    if THINK_CLOSE in text:
        return text.rpartition(THINK_CLOSE)[2]
    return None if THINK_OPEN in text else text
