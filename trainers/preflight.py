"""Pre-flight: does this built dataset fit this trainer and this tokenizer? Runs before every
training (``dataforge train … --check`` runs only it).

Checks, in order (the first failure raises ``PreflightError`` with what to do):
1. the dataset's TRL type (from its columns) is one the trainer takes (TRL's table of dataset
   types: SFT ← language modeling or prompt-completion; DPO and reward ← preference; GRPO ←
   prompt-only); a ``train`` split exists and is not empty;
2. conversational data: the tokenizer has a chat template and it renders the first rows;
3. no doubled BOS: the first example tokenized the way TRL will does not start with BOS twice;
4. GRPO: every column a reward grader reads is in the dataset;
5. the split evaluated on (``eval_split``): ``auto`` takes ``validation``, else ``test`` (one
   with rows; a held-out test split is the second choice, as it is what a team reports on; for
   GRPO, which evaluates by generating, ``validation`` only); a named one must exist, hold rows
   and not be ``train``.
Then it reports, per split, rows and token-length statistics against ``max_length`` (how many
rows would be truncated).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataforge.errors import DataforgeError
from dataforge.formats import trl_dataset_type

ACCEPTS: dict[str, tuple[str, ...]] = {
    "sft": ("language_modeling", "prompt_completion"),
    "dpo": ("preference", "implicit_preference"),
    "reward": ("preference", "implicit_preference"),
    "grpo": ("prompt_only",),
}
SUGGEST = {
    "language_modeling": "`dataforge train sft`",
    "prompt_completion": "`dataforge train sft`",
    "preference": "`dataforge train dpo` or `dataforge train reward`",
    "implicit_preference": "`dataforge train dpo` or `dataforge train reward`",
    "prompt_only": "`dataforge train grpo`",
}
MAX_ROWS_MEASURED = 20_000
EVAL_SPLITS = ("validation", "test")  # what eval_split: auto takes, in this order
# GRPO evaluates by generating num_generations completions per prompt: on a benchmark's whole test
# split (GSM8K's 1,319 prompts) that is hours after training, so auto takes a validation split only
GENERATING_EVAL_SPLITS = ("validation",)


class PreflightError(DataforgeError):
    """The dataset does not fit the trainer or the tokenizer."""


@dataclass
class SplitStats:
    rows: int
    measured: int
    min_tokens: int
    median_tokens: float
    p95_tokens: float
    max_tokens: int
    over_max_length: int


@dataclass
class PreflightReport:
    trainer: str
    trl_type: str
    conversational: bool
    max_length: int
    checks: list[tuple[str, str]] = field(default_factory=list)  # (check, what was found)
    eval_split: str | None = None  # the split evaluated on; None: no evaluation
    warnings: list[str] = field(default_factory=list)
    splits: dict[str, SplitStats] = field(default_factory=dict)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def _sequences(example: dict[str, Any], trl_type: str) -> tuple[list[Any], Any]:
    """The sequence(s) TRL renders for one example — prompt + completion, or prompt + chosen and
    prompt + rejected; just the prompt for prompt-only data — and the tools it renders them with."""
    if trl_type == "language_modeling":
        parts = [example["messages"]] if "messages" in example else [example["text"]]
    elif trl_type == "prompt_only":
        parts = [example["prompt"]]
    elif trl_type == "prompt_completion":
        parts = [_join(example["prompt"], example["completion"])]
    else:
        prompt = example.get("prompt")
        parts = [_join(prompt, example["chosen"]), _join(prompt, example["rejected"])]
    tools = example.get("tools")  # a tool-calling dataset's tools, rendered as TRL renders them
    return parts, json.loads(tools) if isinstance(tools, str) else tools


def _token_ids(tokenizer: Any, example: dict[str, Any], trl_type: str) -> list[list[int]]:
    """The token ids TRL will see for one example (``_sequences``)."""
    parts, tools = _sequences(example, trl_type)
    out = []
    for p in parts:
        if _is_messages(p):
            prompt_only = trl_type == "prompt_only"
            ids = tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=prompt_only, tools=tools)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            out.append(list(ids))
        else:
            out.append(tokenizer(p)["input_ids"])
    return out


def _join(prompt: Any, completion: Any) -> Any:
    if prompt is None:
        return completion
    if _is_messages(prompt) or _is_messages(completion):
        as_list = lambda v: v if _is_messages(v) else [{"role": "user", "content": str(v)}]  # noqa: E731
        return as_list(prompt) + as_list(completion)
    return str(prompt) + str(completion)


def eval_split_of(dataset: Any, wanted: str | None, trainer: str = "sft") -> tuple[str | None, str]:
    """The split to evaluate on (see the module doc) and what the pre-flight says of it."""
    names = ", ".join(dataset) or "none"
    if wanted is None or wanted == "none":
        return None, "none (eval_split: none)"
    if wanted == "auto":
        candidates = GENERATING_EVAL_SPLITS if trainer == "grpo" else EVAL_SPLITS
        for name in candidates:
            if name in dataset and len(dataset[name]):
                return name, f"{name} ({len(dataset[name]):,} rows)"
        empty = [n for n in candidates if n in dataset]
        why = f"split '{empty[0]}' is empty" if empty else f"no {' or '.join(candidates)} split (splits: {names})"
        if trainer == "grpo" and "test" in dataset:
            why += "; grpo evaluates by generating, so auto leaves a test split alone: name it to evaluate on it"
        return None, f"none: {why}"
    if wanted == "train":
        raise PreflightError("eval_split: 'train' is the split trained on; its loss is not a held-out figure")
    if wanted not in dataset:
        raise PreflightError(f"eval_split: the dataset has no split '{wanted}' (splits: {names})")
    if len(dataset[wanted]) == 0:
        raise PreflightError(f"eval_split: split '{wanted}' is empty")
    return wanted, f"{wanted} ({len(dataset[wanted]):,} rows)"


def check(
    dataset: Any,
    trainer: str,
    tokenizer: Any,
    max_length: int,
    reward_columns: list[str] = (),
    eval_split: str | None = "auto",
) -> PreflightReport:
    """Check a ``DatasetDict`` against a trainer and tokenizer; raises PreflightError on a misfit."""
    if "train" not in dataset or len(dataset["train"]) == 0:
        raise PreflightError(f"the dataset has no non-empty 'train' split (splits: {', '.join(dataset) or 'none'})")
    columns = dataset["train"].column_names
    trl_type = trl_dataset_type(columns) or "unknown"
    if trl_type not in ACCEPTS[trainer]:
        hint = f"; it fits {SUGGEST[trl_type]}" if trl_type in SUGGEST else ""
        raise PreflightError(
            f"`{trainer}` trains on {' or '.join(ACCEPTS[trainer])} data, but this dataset is {trl_type} "
            f"(columns: {', '.join(columns)}){hint}"
        )
    first = dataset["train"][0]
    conversational = any(_is_messages(first.get(c)) for c in ("messages", "prompt", "chosen", "completion"))
    report = PreflightReport(trainer, trl_type, conversational, max_length)
    report.checks.append(("dataset type", f"{trl_type} ({'conversational' if conversational else 'standard'})"))
    lengths = None  # each split's measured token counts (``_token_lengths``)
    if conversational:
        if not tokenizer.chat_template:
            raise PreflightError("the data is conversational but the tokenizer has no chat template")
        # every row rendered (and the measured ones counted) before anything reads a row alone
        lengths = {name: _token_lengths(split, name, tokenizer, trl_type, True) for name, split in dataset.items()}
        report.checks.append(("chat template", f"renders every row ({sum(len(s) for s in dataset.values()):,})"))
    ids = _token_ids(tokenizer, first, trl_type)[0]
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        raise PreflightError(
            f"doubled BOS: the first train row starts with {tokenizer.bos_token!r} twice once tokenized "
            "(the text or the chat template already holds BOS and the tokenizer adds another)"
        )
    report.checks.append(("BOS", "not doubled" if bos is not None else "the tokenizer has no BOS"))
    missing = sorted(set(reward_columns) - set(columns))
    if missing:
        raise PreflightError(f"the rewards read columns the dataset lacks: {', '.join(missing)}")
    if reward_columns:
        report.checks.append(("reward columns", ", ".join(sorted(set(reward_columns)))))
    report.eval_split, said = eval_split_of(dataset, eval_split, trainer)
    report.checks.append(("eval split", said))
    if lengths is None:
        lengths = {name: _token_lengths(split, name, tokenizer, trl_type, False) for name, split in dataset.items()}
    for name, split in dataset.items():
        report.splits[name] = _split_stats(len(split), lengths[name], max_length)
    return report


def _token_lengths(split: Any, name: str, tokenizer: Any, trl_type: str, conversational: bool) -> list[int]:
    """The token count of each row of a split its statistics measure (``_measured_rows``); with
    ``conversational``, every other row is rendered with the chat template too, as TRL will render
    it before it trains. A row the template refuses (roles that do not alternate, a role it does not
    know) is a PreflightError naming its split, row and ``_id`` (``_refused``). The first three rows
    alone were rendered, so such a row further on failed TRL's own preparation with the template's
    error and no row. Each row is rendered once."""
    measured = _measured_rows(len(split))
    lengths = []
    for i in measured:
        example = split[i]
        with _refused(name, i, example) if conversational else nullcontext():
            lengths.append(max(len(ids) for ids in _token_ids(tokenizer, example, trl_type)))
    if conversational:
        prompt_only = trl_type == "prompt_only"
        rest = sorted(set(range(len(split))) - set(measured))
        for i, example in zip(rest, split.select(rest) if rest else [], strict=True):
            parts, tools = _sequences(example, trl_type)
            with _refused(name, i, example):
                for p in parts:
                    if _is_messages(p):
                        tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=prompt_only, tools=tools)
    return lengths


@contextmanager
def _refused(split: str, i: int, example: dict[str, Any]) -> Iterator[None]:
    """A row the chat template does not render, as a PreflightError naming the split, row and ``_id``."""
    try:
        yield
    except Exception as exc:
        which = f" ({example['_id']})" if "_id" in example else ""
        raise PreflightError(f"the chat template does not render row {i}{which} of {split}: {exc}") from exc


def _measured_rows(n: int) -> list[int] | range:
    """The rows of a split of ``n`` that its statistics tokenize: all, or a seeded sample of
    ``MAX_ROWS_MEASURED`` (the truncated count is scaled up)."""
    if n > MAX_ROWS_MEASURED:
        return sorted(np.random.default_rng(0).choice(n, MAX_ROWS_MEASURED, replace=False).tolist())
    return range(n)


def _split_stats(n: int, measured: list[int], max_length: int) -> SplitStats:
    """A split of ``n`` rows from the token counts of its measured rows (``_token_lengths``)."""
    if n == 0:
        return SplitStats(0, 0, 0, 0.0, 0.0, 0, 0)
    lengths = np.array(measured)
    over = int((lengths > max_length).sum() * n / len(lengths))
    return SplitStats(
        rows=n,
        measured=len(lengths),
        min_tokens=int(lengths.min()),
        median_tokens=float(np.median(lengths)),
        p95_tokens=float(np.percentile(lengths, 95)),
        max_tokens=int(lengths.max()),
        over_max_length=over,
    )
