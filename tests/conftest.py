"""Shared fixtures: small recipes written into a temp dir, and the real shipped data."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
GSM8K = RECIPES / "data" / "gsm8k"
HH = RECIPES / "data" / "hh-rlhf-harmless-base"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Workspace:
    """A temp directory holding a recipe, its data and its build directory."""

    def __init__(self, root: Path):
        self.root = root
        self.out = root / "build"

    def recipe(self, text: str, name: str = "recipe.yaml") -> Path:
        path = self.root / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def jsonl(self, name: str, rows: list[dict]) -> Path:
        return write_jsonl(self.root / name, rows)


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


QA_ROWS = [
    {"question": "What is two plus two, written as a number?", "answer": "2+2=<<2+2=4>>4\n#### 4"},
    {"question": "How many legs do three cats have in total?", "answer": "3*4=<<3*4=12>>12\n#### 12"},
    {"question": "short?", "answer": "1\n#### 1"},
    {"question": "What is ten minus seven, as a whole number?", "answer": "10-7=<<10-7=3>>3\n#### 3"},
]

QA_RECIPE = """
name: qa
steps:
  raw:
    kind: source
    path: qa.jsonl
  clean:
    kind: clean.normalize
    inputs: {data: raw}
    fields: [question, answer]
  filtered:
    kind: clean.filter
    inputs: {data: clean}
    fields: [question]
    min_length: 10
  parsed:
    kind: parse.gsm8k
    inputs: {data: filtered}
  sft:
    kind: format
    type: prompt_completion
    inputs: {data: parsed}
    prompt: question
    completion: reasoning
datasets:
  qa_sft:
    splits: {train: sft}
"""


@pytest.fixture
def qa(ws: Workspace) -> tuple[Workspace, Path]:
    """A four-row QA recipe: normalize → filter (drops one row) → parse → format → export."""
    ws.jsonl("qa.jsonl", QA_ROWS)
    return ws, ws.recipe(QA_RECIPE)


def make_ctx(root: Path, step: str = "test", fingerprint: str = "0123456789abcdef"):
    """A Context for calling a step function directly (steps are pure functions)."""
    from dataforge.engine.step import Context

    return Context(step=step, fingerprint=fingerprint, base_dir=root, scratch_dir=root / "scratch")


@pytest.fixture
def ctx(tmp_path: Path):
    return make_ctx(tmp_path)


@pytest.fixture(autouse=True, scope="session")
def _isolated_hash_cache(tmp_path_factory):
    """Keep the file-hash cache of test runs out of the user's ~/.cache."""
    import os

    os.environ["DATAFORGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("dataforge-cache"))


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A tiny random causal LM (2 layers, hidden 64) with a chat template, saved to disk. Its
    outputs are noise: tests with it check plumbing, not quality."""
    from dataforge.tiny import make_tiny_causal_lm

    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory) -> Path:
    """A tiny random reward model (sequence classification, one label)."""
    from dataforge.tiny import make_tiny_reward_model

    return make_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm") / "model")


def start_server(model: Path, name: str = "tiny") -> tuple[object, str]:
    """``python -m dataforge.llm.server`` in its own process on a free loopback port; returns
    (process, base url). The caller terminates it."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "dataforge.llm.server", "--model", str(model), "--name", name, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()  # "serving <name> on http://127.0.0.1:PORT/v1"
    if " on " not in line:
        proc.kill()
        raise RuntimeError(f"the model server did not start: {line!r}")
    return proc, line.strip().rsplit(" ", 1)[1]


@pytest.fixture(scope="session")
def model_server(tiny_lm):
    """The OpenAI-compatible server around the tiny model, as a real process on loopback."""
    proc, url = start_server(tiny_lm)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def scripted_model():
    """Start an OpenAI-compatible server on loopback whose answers the test scripts: ``start(fn)``
    with ``fn(messages) -> str`` (or an int: answer with that HTTP status; or a (text,
    finish_reason) pair, "length" for an answer cut at max_tokens) returns the ModelSpec
    fields of a model served by it. The HTTP,
    client, cache and retries are real; only the model is a script, so a test knows each answer."""
    import json as _json
    import threading

    from dataforge.llm.server import ModelServer

    servers = []

    def start(fn) -> dict:
        def answer(path, body, number):
            texts = [fn(body["messages"]) for _ in range(body.get("n", 1))]
            if isinstance(texts[0], int):
                return texts[0], b"{}"
            pairs = [t if isinstance(t, tuple) else (t, "stop") for t in texts]
            choices = [
                {"index": i, "finish_reason": reason, "message": {"content": t}} for i, (t, reason) in enumerate(pairs)
            ]
            return 200, _json.dumps({"choices": choices}).encode()

        server = ModelServer(("127.0.0.1", 0), backend=None, model_name="scripted", fault=answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return {"backend": "openai", "model": "scripted", "base_url": server.url, "max_retries": 0}

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance for the tests of the Ray executor (two CPUs, as CI has), shut
    down after the session; a build finds it connected and uses it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()
