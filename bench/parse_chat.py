"""``parse.chat`` throughput: conversations read at once by polars expressions against the same
conversations read row by row in Python (the reading it falls back to for contents given as
parts), and chat text (ChatML) read back into turns. Engine timings, not quality figures.

Data: the real HH-RLHF harmless-base test transcripts (``recipes/data/hh-rlhf-harmless-base``,
2,312 chosen conversations, 2–12 turns), repeated to ``--rows`` rows: once as ShareGPT turns
(``{from: human|gpt, value}``) and once written out as ChatML text. Each reading is timed once, in
one process, and the messages of the two ShareGPT readings must be equal.

Usage: .venv/bin/python bench/parse_chat.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import polars as pl

from dataforge.engine.step import Context
from dataforge.steps.parse import ChatConfig, _Chat, parse_chat
from dataforge.text.chat_text import read_chat_text

REPO = Path(__file__).resolve().parents[1]
HH = REPO / "recipes" / "data" / "hh-rlhf-harmless-base" / "test.jsonl.gz"


def conversations(rows: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(ShareGPT, ChatML text) tables of ``rows`` rows, as described in the module doc."""
    chats = [read_chat_text(json.loads(line)["chosen"], "transcript") for line in gzip.open(HH, "rt")]
    chats = [c for c in chats if c]
    picked = [chats[k % len(chats)] for k in range(rows)]
    ids = [f"c:{k}" for k in range(rows)]
    sharegpt = [[{"from": {"user": "human"}.get(t["role"], "gpt"), "value": t["content"]} for t in c] for c in picked]
    chatml = ["".join(f"<|im_start|>{t['role']}\n{t['content']}<|im_end|>\n" for t in c) for c in picked]
    return pl.DataFrame({"_id": ids, "conversations": sharegpt}), pl.DataFrame({"_id": ids, "text": chatml})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    sharegpt, chatml = conversations(args.rows)
    ctx = Context(step="bench", fingerprint="0" * 16, base_dir=REPO, scratch_dir=REPO / "build" / "scratch")
    turns = sum(len(c) for c in sharegpt["conversations"].to_list())
    print(f"{args.rows:,} conversations, {turns:,} turns (HH-RLHF harmless-base test, repeated)")

    start = time.perf_counter()
    at_once = parse_chat({"data": sharegpt}, ChatConfig(fields=["conversations"]), ctx).tables["data"]
    whole = time.perf_counter() - start

    chat = _Chat("conversations", sharegpt.schema["conversations"], {})
    start = time.perf_counter()
    rows = zip(sharegpt["_id"], sharegpt["conversations"].to_list(), strict=True)
    one_by_one = [chat.conversation(c, rid)[0] for rid, c in rows]
    by_row = time.perf_counter() - start
    assert at_once["conversations"].to_list() == one_by_one

    start = time.perf_counter()
    text = parse_chat({"data": chatml}, ChatConfig(fields=["text"], chat_format="chatml"), ctx).tables["data"]
    chat_text = time.perf_counter() - start
    assert text["text"].to_list() == one_by_one

    print("| reading | seconds | conversations / s |")
    print("| --- | --- | --- |")
    for name, seconds in (
        ("ShareGPT, at once (polars expressions)", whole),
        ("ShareGPT, row by row (Python)", by_row),
        ("ChatML text (Python)", chat_text),
    ):
        print(f"| {name} | {seconds:.2f} | {args.rows / seconds:,.0f} |")


if __name__ == "__main__":
    main()
