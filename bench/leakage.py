"""Leakage detection benchmark across domains (the leakage issue). Prints the figures recorded in
BENCHMARKS.md.

Data: GPT-4 rephrasings of benchmark items (`bench/data/decontamination-rephrases/`, from
llm-decontaminator; copied from the project's shared data), the **development half** by default
(`--split dev`: even test indices; the defaults were chosen on it, so its figures are development
figures). `--split heldout --data DIR` reads the `*.heldout.jsonl` files of DIR the same way; this
repository does not have them.

Domains, each planted into training data in several forms and scored against clean rows:
- gsm8k: eval = all 1,319 GSM8K test questions (with final answers); train = GSM8K train (7,473
  clean rows, question + worked answer) plus each rephrase with the worked answer, with the final
  answer only, and alone. Run twice: with the answer columns and without.
- chat: the same GSM8K items as conversations (a `messages` column of role/content turns, the
  format TRL's SFT trainer reads): the rephrase as the user turn with the worked answer, with
  the final answer, and after a system prompt; the clean rows are GSM8K train as conversations.
  Run twice: without answer columns, and with the eval items' answers (each conversation's
  answer is read from its text, `answers_from_text`). Then again without answer columns with the
  conversations written out as one text column in ChatML and in Llama 3's format (an SFT `text`
  column with the chat template applied). The check reads the user turns; the baselines read the
  conversation as text.
- mmlu: eval = the items' question with their correct choice (the check's multiple-choice view);
  train = each rephrase with its answer, alone, and the verbatim item (question, lettered choices,
  answer). Two folds: the items of one half are the eval set, and the other half's rephrases and
  verbatim items are its hard negatives (same benchmark, subject and template; other items).
  High-school US history is reported apart (its rephrases drop the passage the item quotes).
- humaneval: eval = the prompts (signature + docstring); train = the rewritten functions. Two
  folds as for MMLU (the other half's rewrites and reference functions are hard negatives), and
  clean code: every function with a docstring in this Python's standard library.

Compared on the same rows in one run:
  (a) dataforge `leakage.check` at its defaults (plus the domain's column options);
  (b) the llm-decontaminator baseline: MiniLM-embed every train row and eval item, flag a train
      row whose top-1 cosine reaches 0.80 / 0.85;
  (c) 13-gram overlap (lowercased words), as lm-eval / GPT-3 decontamination.
With `--judge MODEL_SPEC` (e.g. `openai:qwen@http://127.0.0.1:8000/v1`, `transformers:./model`,
`vllm:Qwen/Qwen2.5-7B-Instruct`), (a) runs again with that LLM judge on its undecided pairs and
reports its calls and seconds.

Timing: the models (MiniLM, its static table) are loaded before anything is timed, and each check
starts with no eval side kept from an earlier one (``forget_eval_sides``): every check is timed as
a first check in a process; the baseline's train vectors are computed once per domain and counted
in each of its runs. Each method's wall seconds and the process's CPU seconds (every thread) are
both reported: on a VM whose host takes time from it (steal time in `top`), wall time varies from
run to run far more than CPU time does.

Usage: .venv/bin/python bench/leakage.py [--split dev] [--domains gsm8k,mmlu,humaneval,chat]
           [--no-baselines] [--judge SPEC] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / "recipes" / "data" / "gsm8k"
REPHRASES = REPO / "bench" / "data" / "decontamination-rephrases"  # a copy of the development half
LETTERS = "ABCDEFGHIJ"


@dataclass
class Case:
    """One run of the check: train rows (``_id``, ``text``, maybe ``answer``), eval items, the planted
    rows' (form, eval id) and the negatives' kind."""

    domain: str
    train: pl.DataFrame
    evals: pl.DataFrame
    planted: dict[str, tuple[str, str]]
    negatives: dict[str, str]
    options: dict[str, Any]
    eval_text: list[str]  # each eval item as the baselines read it
    notes: dict[str, str] = field(default_factory=dict)


def _read(path: Path) -> pl.DataFrame:
    if not path.exists():
        raise SystemExit(f"{path}: not found (the held-out half is not in this repository; pass --data DIR)")
    return pl.read_ndjson(path)


def _worked(answer: str) -> str:
    return re.sub(r"<<[^>]*>>", "", answer)


def _final(answer: str) -> str:
    return answer.rsplit("####", 1)[-1].strip()


def _gsm8k(folder: Path, split: str) -> tuple[pl.DataFrame, pl.DataFrame, list[dict[str, Any]]]:
    """GSM8K train, the eval items (every test question, ``te:<index>``, with its final answer)
    and the rephrases of the split (empty ones left out)."""
    test = pl.read_ndjson(GSM8K / "test.jsonl")
    train = pl.read_ndjson(GSM8K / "train.jsonl")
    rephrased = _read(folder / f"gsm8k_test_rephrased.{split}.jsonl")
    evals = test.select(
        pl.format("te:{}", pl.int_range(pl.len())).alias("_id"),
        "question",
        pl.col("answer").map_elements(_final, return_dtype=pl.String).alias("answer"),
    )
    return train, evals, [r for r in rephrased.iter_rows(named=True) if (r["rephrased_question"] or "").strip()]


def gsm8k_cases(folder: Path, split: str) -> list[Case]:
    train, evals, rephrased = _gsm8k(folder, split)
    rows, negatives, planted = [], {}, {}
    for i, r in enumerate(train.iter_rows(named=True)):
        rows.append(
            {"_id": f"clean:{i}", "text": r["question"] + "\n" + _worked(r["answer"]), "answer": _final(r["answer"])}
        )
        negatives[f"clean:{i}"] = "clean"
    for r in rephrased:
        eid = f"te:{r['test_index']}"
        forms = {
            "+ worked answer": (r["rephrased_question"] + "\n" + _worked(r["answer"]), _final(r["answer"])),
            "+ final answer": (r["rephrased_question"] + "\nAnswer: " + _final(r["answer"]), _final(r["answer"])),
            "question only": (r["rephrased_question"], None),
        }
        for form, (text, answer) in forms.items():
            pid = f"plant:{form}:{r['test_index']}"
            rows.append({"_id": pid, "text": text, "answer": answer})
            planted[pid] = (form, eid)
    train_df = pl.DataFrame(rows, schema={"_id": pl.String, "text": pl.String, "answer": pl.String})
    with_answers = {
        "train_fields": ["text"],
        "eval_fields": ["question"],
        "train_answer": "answer",
        "eval_answer": "answer",
    }
    without = {"train_fields": ["text"], "eval_fields": ["question"]}
    q = evals["question"].to_list()
    return [
        Case("gsm8k", train_df, evals, planted, negatives, with_answers, q),
        Case("gsm8k, no answer columns", train_df, evals, planted, negatives, without, q),
    ]


def _conversation(user: str, assistant: str, system: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def chat_cases(folder: Path, split: str) -> list[Case]:
    from dataforge.text.fields import MESSAGES, text_expr

    train, evals, rephrased = _gsm8k(folder, split)
    rows, negatives, planted = [], {}, {}
    for i, r in enumerate(train.iter_rows(named=True)):
        rows.append({"_id": f"clean:{i}", "messages": _conversation(r["question"], _worked(r["answer"]))})
        negatives[f"clean:{i}"] = "clean conversations"
    tutor = "You are a patient math tutor. Explain each step."
    for r in rephrased:
        q, worked, final = r["rephrased_question"], _worked(r["answer"]), _final(r["answer"])
        forms = {
            "user turn + worked answer": _conversation(q, worked),
            "user turn + final answer": _conversation(q, f"The answer is {final}."),
            "system prompt + user turn": _conversation(q, worked, tutor),
        }
        for form, messages in forms.items():
            pid = f"plant:{form}:{r['test_index']}"
            rows.append({"_id": pid, "messages": messages})
            planted[pid] = (form, f"te:{r['test_index']}")
    train_df = pl.DataFrame(rows, schema={"_id": pl.String, "messages": MESSAGES})
    train_df = train_df.with_columns(text_expr(train_df, "messages").alias("text"))  # what the baselines read
    opts = {"train_fields": ["messages"], "eval_fields": ["question"]}
    q = evals["question"].to_list()
    cases = [
        Case("chat", train_df, evals, planted, negatives, opts, q),
        Case("chat, eval answers", train_df, evals, planted, negatives, {**opts, "eval_answer": "answer"}, q),
    ]
    for name, render in (("ChatML", _chatml), ("Llama 3", _llama3)):
        written = train_df.with_columns(pl.Series("written", [render(m) for m in train_df["messages"].to_list()]))
        written = written.with_columns(pl.col("written").alias("text"))  # the baselines read the same text
        cases.append(
            Case(f"chat as {name} text", written, evals, planted, negatives, {**opts, "train_fields": ["written"]}, q)
        )
    return cases


def _chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def _llama3(messages: list[dict[str, str]]) -> str:
    turns = (f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages)
    return "<|begin_of_text|>" + "".join(turns)


def _folds(items: pl.DataFrame) -> list[tuple[pl.DataFrame, pl.DataFrame]]:
    """Two folds by test index: each half is the eval set once, the other half its hard negatives."""
    a = items.filter(pl.col("test_index") % 4 == 0)
    b = items.filter(pl.col("test_index") % 4 != 0)
    return [(a, b), (b, a)]


def mmlu_cases(folder: Path, split: str) -> list[Case]:
    items = _read(folder / f"mmlu_test_rephrased.{split}.jsonl").filter(
        pl.col("rephrased_question").str.strip_chars() != ""
    )

    def forms(r: dict[str, Any]) -> dict[str, str]:
        correct = r["choices"][LETTERS.index(r["answer"])]
        lettered = "\n".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(r["choices"]))
        return {
            "rephrase + answer": f"{r['rephrased_question']}\nAnswer: {correct}",
            "question only": r["rephrased_question"],
            "verbatim": f"{r['question']}\n{lettered}\nAnswer: {r['answer']}",
        }

    cases = []
    for k, (evals, others) in enumerate(_folds(items)):
        rows, planted, negatives = [], {}, {}
        for own, frame in ((True, evals), (False, others)):
            for r in frame.iter_rows(named=True):
                eid = f"{r['subject']}:{r['test_index']}"
                for form, text in forms(r).items():
                    form_key = form if r["subject"] != "high_school_us_history" else f"{form} (US history)"
                    tid = f"{'plant' if own else 'other'}:{form}:{eid}"
                    rows.append({"_id": tid, "text": text})
                    if own:
                        planted[tid] = (form_key, eid)
                    else:
                        us = r["subject"] == "high_school_us_history"
                        negatives[tid] = "other items (US history: passages shared)" if us else "other items"
        ev = evals.select(pl.format("{}:{}", "subject", "test_index").alias("_id"), "question", "choices", "answer")
        baseline = [
            q + "\n" + c[LETTERS.index(a)]
            for q, c, a in zip(ev["question"], ev["choices"].to_list(), ev["answer"], strict=True)
        ]
        opts = {
            "train_fields": ["text"],
            "eval_fields": ["question"],
            "eval_choices": "choices",
            "eval_answer": "answer",
        }
        cases.append(Case(f"mmlu fold {k + 1}", pl.DataFrame(rows), ev, planted, negatives, opts, baseline))
    return cases


def stdlib_functions(limit: int = 3000) -> list[str]:
    """Source of the functions with a docstring in this Python's standard library (clean code rows)."""
    out: list[str] = []
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node) and node.end_lineno:
                text = ast.get_source_segment(source, node)
                if text and 3 <= text.count("\n") <= 60:
                    out.append(text)
                    if len(out) >= limit:
                        return out
    return out


def humaneval_cases(folder: Path, split: str) -> list[Case]:
    items = (
        _read(folder / f"humaneval_rewritten.{split}.jsonl")
        .with_columns(pl.col("task_id").str.extract(r"(\d+)$").cast(pl.Int64).alias("test_index"))
        .filter(pl.col("rewritten").str.strip_chars() != "")
    )
    clean = stdlib_functions()
    cases = []
    for k, (evals, others) in enumerate(_folds(items)):
        rows = [{"_id": f"clean:{i}", "text": t} for i, t in enumerate(clean)]
        negatives = {r["_id"]: "clean code" for r in rows}
        planted = {}
        for r in evals.iter_rows(named=True):
            planted[f"plant:rewritten:{r['task_id']}"] = ("rewritten function", r["task_id"])
            rows.append({"_id": f"plant:rewritten:{r['task_id']}", "text": r["rewritten"]})
        for r in others.iter_rows(named=True):
            for form, text in (("rewrite", r["rewritten"]), ("reference", r["prompt"] + r["canonical_solution"])):
                negatives[f"other:{form}:{r['task_id']}"] = "other items"
                rows.append({"_id": f"other:{form}:{r['task_id']}", "text": text})
        ev = evals.select(pl.col("task_id").alias("_id"), "prompt")
        opts = {"train_fields": ["text"], "eval_fields": ["prompt"]}
        cases.append(
            Case(f"humaneval fold {k + 1}", pl.DataFrame(rows), ev, planted, negatives, opts, ev["prompt"].to_list())
        )
    return cases


DOMAINS = {"gsm8k": gsm8k_cases, "mmlu": mmlu_cases, "humaneval": humaneval_cases, "chat": chat_cases}


def clock() -> np.ndarray:
    """(wall seconds, CPU seconds of this process, every thread): a difference of two readings is
    what a method took. CPU time leaves out what a busy host took from this VM (its steal time),
    which wall time does not."""
    return np.array([time.perf_counter(), time.process_time()])


@dataclass
class Outcome:
    """Flagged train rows (train id → eval id) of one method on one case, and its (wall, CPU)
    seconds."""

    flagged: dict[str, str]
    seconds: np.ndarray
    extra: str = ""


def warm_models() -> None:
    """Load what every method uses before anything is timed: MiniLM (a first text embedded) and
    its static table."""
    from dataforge.embed import embed
    from dataforge.static_embed import load_static

    embed(["warm up"])
    load_static(None)


def run_check(case: Case, overrides: dict[str, Any], judge: str | None = None) -> Outcome:
    from dataforge.engine.step import Context
    from dataforge.steps.leakage import LeakageConfig, forget_eval_sides, leakage_check

    forget_eval_sides()  # timed as a first check: nothing kept of an earlier case's eval side

    ctx = Context(step="leakage", fingerprint="0" * 16, base_dir=REPO, scratch_dir=REPO / "build" / "scratch")
    options = {**case.options, **overrides, "action": "flag"}
    extra = ""
    if judge is not None:
        from dataforge.llm.client import ModelPool
        from dataforge.llm.spec import ModelSpec, parse_model_override

        _, fields = parse_model_override(f"judge={judge}")
        options["judge"] = ModelSpec(**fields)
        ctx.llm = ModelPool(None)
    cfg = LeakageConfig(**options)
    start = clock()
    result = leakage_check({"train": case.train, "eval": case.evals}, cfg, ctx)
    seconds = clock() - start
    m = result.tables["matches"]
    if judge is not None:
        stats = ctx.llm.client(options["judge"]).stats
        judged = int((m["detector"] == "judge").sum())
        extra = (
            f"{stats.requests} judge calls ({stats.cache_hits} cached), {stats.backend_seconds:.1f} s in the "
            f"judge, {judged} rows flagged by it"
        )
        ctx.llm.close()
    return Outcome(dict(zip(m["train_id"], m["eval_id"], strict=True)), seconds, extra)


def minilm_top1(
    case: Case, cache: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-1 eval item and cosine of every train row by MiniLM (the model's 256-token limit), and
    the seconds it took (the train rows of both gsm8k runs are embedded once, their time counted
    in both)."""
    from dataforge.embed import embed

    key = case.domain.split(",")[0]
    if key not in cache:
        start = clock()
        cache[key] = (embed(case.train["text"].to_list()), clock() - start)
    tv, train_seconds = cache[key]
    start = clock() - train_seconds
    ev = embed(case.eval_text)
    best, arg = np.zeros(len(tv)), np.zeros(len(tv), dtype=np.int64)
    for s in range(0, len(tv), 1024):
        sims = tv[s : s + 1024] @ ev.T
        best[s : s + 1024], arg[s : s + 1024] = sims.max(axis=1), sims.argmax(axis=1)
    return best, arg, clock() - start


def ngram13(case: Case, n: int = 13) -> Outcome:
    """Train rows sharing a lowercased word 13-gram with an eval item (the first such item)."""
    start = clock()
    grams: dict[tuple[str, ...], str] = {}
    for eid, text in zip(case.evals["_id"], case.eval_text, strict=True):
        words = re.findall(r"\w+", text.lower())
        for k in range(len(words) - n + 1):
            grams.setdefault(tuple(words[k : k + n]), eid)
    flagged = {}
    for tid, text in zip(case.train["_id"], case.train["text"], strict=True):
        words = re.findall(r"\w+", text.lower())
        for k in range(len(words) - n + 1):
            if (g := tuple(words[k : k + n])) in grams:
                flagged[tid] = grams[g]
                break
    return Outcome(flagged, clock() - start)


def score(case: Case, out: Outcome) -> dict[str, Any]:
    """Recall per form (the right eval item found), negatives flagged per kind."""
    forms: dict[str, list[bool]] = {}
    for tid, (form, eid) in case.planted.items():
        forms.setdefault(form, []).append(out.flagged.get(tid) == eid)
    neg: dict[str, list[bool]] = {}
    for tid, kind in case.negatives.items():
        neg.setdefault(kind, []).append(tid in out.flagged)
    return {"recall": forms, "negatives": neg, "seconds": out.seconds}


def merge(scores: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"recall": {}, "negatives": {}, "seconds": np.zeros(2)}
    for s in scores:
        for part in ("recall", "negatives"):
            for k, v in s[part].items():
                out[part].setdefault(k, []).extend(v)
        out["seconds"] += s["seconds"]
    return out


def show(domain: str, results: dict[str, dict[str, Any]]) -> None:
    methods = list(results)
    print(f"\n### {domain}\n")
    print("| | " + " | ".join(methods) + " |")
    print("|---|" + "---|" * len(methods))
    first = results[methods[0]]
    for form in first["recall"]:
        n = len(first["recall"][form])
        cells = [f"{np.mean(results[m]['recall'][form]):.3f}" for m in methods]
        print(f"| recall: {form} ({n}) | " + " | ".join(cells) + " |")
    for kind in first["negatives"]:
        n = len(first["negatives"][kind])
        cells = [
            f"{sum(results[m]['negatives'][kind])} ({np.mean(results[m]['negatives'][kind]):.2%})" for m in methods
        ]
        print(f"| flagged: {kind} ({n:,}) | " + " | ".join(cells) + " |")
    print("| seconds | " + " | ".join(f"{results[m]['seconds'][0]:.1f}" for m in methods) + " |")
    print("| CPU seconds | " + " | ".join(f"{results[m]['seconds'][1]:.1f}" for m in methods) + " |")


def parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="dev", help="dev (default) or heldout: which *.SPLIT.jsonl files to read")
    ap.add_argument("--data", type=Path, default=REPHRASES, help="folder of the rephrase files")
    ap.add_argument("--domains", default="gsm8k,mmlu,humaneval,chat")
    ap.add_argument("--no-baselines", action="store_true", help="only (a): skip MiniLM-everything and 13-gram")
    ap.add_argument("--judge", metavar="MODEL_SPEC", help="also run (a) with this LLM judge")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a leakage.check option")
    args = ap.parse_args(argv)
    overrides = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    print(f"split: {args.split} ({'development figures' if args.split == 'dev' else 'held out'}), data: {args.data}")
    report: dict[str, dict[str, dict[str, Any]]] = {}
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    warm_models()
    for name in args.domains.split(","):
        cases = DOMAINS[name](args.data, args.split)
        per_method: dict[str, list[dict[str, Any]]] = {}
        runs = {}  # the gsm8k and chat runs are shown apart (with and without answer columns)
        for case in cases:
            group = case.domain if name in ("gsm8k", "chat") else name
            runs.setdefault(group, {})
            res = runs[group]
            out = run_check(case, overrides)
            res.setdefault("dataforge", []).append(score(case, out))
            if args.judge:
                jo = run_check(case, overrides, args.judge)
                res.setdefault("dataforge + judge", []).append(score(case, jo))
                print(f"{case.domain}: {jo.extra}")
            if not args.no_baselines:
                best, arg, secs = minilm_top1(case, cache)
                ids, eids = case.train["_id"].to_list(), case.evals["_id"].to_list()
                for threshold in (0.80, 0.85):
                    hit = Outcome({ids[i]: eids[arg[i]] for i in np.nonzero(best >= threshold)[0]}, secs)
                    res.setdefault(f"MiniLM top-1 >= {threshold}", []).append(score(case, hit))
                res.setdefault("13-gram", []).append(score(case, ngram13(case)))
        del per_method
        for group, res in runs.items():
            merged = {m: merge(v) for m, v in res.items()}
            show(group, merged)
            report[group] = merged
            if "MiniLM top-1 >= 0.8" in merged:
                wall, cpu = merged["MiniLM top-1 >= 0.8"]["seconds"] / merged["dataforge"]["seconds"]
                print(f"\nspeed-up of dataforge over MiniLM-everything: {wall:.1f}x (wall), {cpu:.1f}x (CPU)")
    return report


if __name__ == "__main__":
    main()
