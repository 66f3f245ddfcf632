"""Each trainer runs 2 steps on CPU on a tiny random model over datasets built by a recipe from
the shipped data. The model is noise: these tests check that the data trains (plumbing), that
LoRA trains only adapters, that GRPO is rewarded by the verifier, and that a misfit is caught
before any training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from dataforge.cli import main
from dataforge.engine.runner import build
from tests.conftest import RECIPES
from trainers import TrainConfig, load_train_config
from trainers.config import TrainConfigError
from trainers.preflight import PreflightError, check
from trainers.run import load_tokenizer, train

RECIPE = f"""
name: train_data
steps:
  gsm8k:
    kind: source
    path: {RECIPES}/data/gsm8k/train.jsonl
    limit: 24
  parsed:
    kind: parse.gsm8k
    inputs: {{data: gsm8k}}
  reasoning:
    kind: format.reasoning
    inputs: {{data: parsed}}
    think: reasoning
    answer: final_answer
  sft:
    kind: format
    type: messages
    inputs: {{train: reasoning}}
    prompt: question
    completion: completion
  sft_pc:
    kind: format
    type: prompt_completion
    inputs: {{train: reasoning}}
    prompt: question
    completion: completion
  grpo:
    kind: format
    type: prompt_only
    inputs: {{train: reasoning}}
    prompt: question
    extra: {{answer: final_answer}}
  held:
    kind: split
    inputs: reasoning
    fractions: {{train: 0.75, validation: 0.25}}
    group: question
    seed: 1
  sft_held:
    kind: format
    type: messages
    inputs: {{train: held.train, validation: held.validation}}
    prompt: question
    completion: completion
  grpo_held:
    kind: format
    type: prompt_only
    inputs: {{train: held.train, test: held.validation}}
    prompt: question
    extra: {{answer: final_answer}}
  short:
    kind: clean.filter
    inputs: {{train: reasoning}}
    fields: [question]
    max_length: 200
  sft_short:
    kind: format
    type: messages
    inputs: {{train: short.train}}
    prompt: question
    completion: completion
  hh:
    kind: source
    path: {RECIPES}/data/hh-rlhf-harmless-base/test.jsonl.gz
    limit: 24
  hh_parsed:
    kind: parse.hh_rlhf
    inputs: {{data: hh}}
  dpo:
    kind: format
    type: preference
    inputs: {{train: hh_parsed}}
    prompt: prompt
    chosen: chosen
    rejected: rejected
datasets:
  sft: {{splits: {{train: sft.train}}}}
  sft_pc: {{splits: {{train: sft_pc.train}}}}
  grpo: {{splits: {{train: grpo.train}}}}
  dpo: {{splits: {{train: dpo.train}}}}
  sft_held: {{splits: {{train: sft_held.train, validation: sft_held.validation}}}}
  grpo_held: {{splits: {{train: grpo_held.train, test: grpo_held.test}}}}
  sft_leaky: {{splits: {{train: sft.train, validation: sft_short.train}}}}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    (root / "recipe.yaml").write_text(RECIPE)
    build(root / "recipe.yaml", root / "build", show_progress=False)
    return root / "build" / "datasets"


def cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = {"max_steps": 2, "batch_size": 2, "max_length": 128, "logging_steps": 1, "output_dir": str(tmp_path / "run")}
    return TrainConfig(**{**base, **kw})


def assert_trained(result, data_dir: Path) -> None:
    assert result.steps == 2 and math.isfinite(result.train_loss)
    assert (result.output_dir / "model.safetensors").exists() or (
        result.output_dir / "adapter_model.safetensors"
    ).exists()
    prov = json.loads(result.provenance.read_text())
    meta = json.loads((data_dir / "dataforge.json").read_text())
    assert prov["dataset"]["run_id"] == meta["run_id"]
    assert prov["dataset"]["recipe_sha256"] == meta["recipe_sha256"]
    assert prov["dataset"]["fingerprint"] == meta["fingerprint"]
    assert prov["dataset"]["lineage"].endswith("lineage.duckdb")


def test_sft_on_chat_messages(data, tiny_lm, tmp_path):
    result = train("sft", data / "sft", str(tiny_lm), cfg(tmp_path))
    assert_trained(result, data / "sft")
    assert result.trainable_params == result.total_params
    assert json.loads(result.provenance.read_text())["completion_only_loss"] is False


def test_sft_lora_trains_only_the_adapters(data, tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    result = train("sft", data / "sft_pc", str(tiny_lm), cfg(tmp_path, lora=lora))
    assert_trained(result, data / "sft_pc")
    assert json.loads(result.provenance.read_text())["completion_only_loss"] is True  # prompt/completion data
    base = AutoModelForCausalLM.from_pretrained(tiny_lm)
    # per adapted layer: A is r × in, B is out × r; q_proj 64→64, v_proj 64→32 (2 KV heads of 16), 2 layers
    expected = 2 * (4 * (64 + 64) + 4 * (64 + 32))
    assert result.trainable_params == expected
    assert result.total_params == sum(p.numel() for p in base.parameters()) + expected


def test_dpo_on_preference_pairs(data, tiny_lm, tmp_path):
    assert_trained(train("dpo", data / "dpo", str(tiny_lm), cfg(tmp_path)), data / "dpo")


def test_reward_model_on_preference_pairs(data, tiny_lm, tmp_path):
    result = train("reward", data / "dpo", str(tiny_lm), cfg(tmp_path))
    assert_trained(result, data / "dpo")


def test_grpo_is_rewarded_by_the_gsm8k_verifier(data, tiny_lm, tmp_path):
    result = train(
        "grpo",
        data / "grpo",
        str(tiny_lm),
        cfg(tmp_path, num_generations=2, max_completion_length=8),
    )
    assert_trained(result, data / "grpo")
    logged = {k for entry in result.log_history for k in entry}
    assert "rewards/math_answer/mean" in logged and "rewards/format_reward/mean" in logged


def test_sft_evaluates_on_the_validation_split_after_training_and_every_eval_steps(data, tiny_lm, tmp_path):
    result = train("sft", data / "sft_held", str(tiny_lm), cfg(tmp_path, eval_steps=1))
    assert_trained(result, data / "sft_held")
    assert result.eval_split == "validation" and math.isfinite(result.eval_metrics["eval_loss"])
    assert [e["step"] for e in result.log_history if "eval_loss" in e] == [1, 2]  # eval_steps: 1
    checks = dict(result.preflight.checks)
    rows = json.loads((data / "sft_held" / "dataforge.json").read_text())["splits"]["validation"]["rows"]
    assert checks["eval split"] == f"validation ({rows} rows)" and rows > 0
    assert checks["eval split overlap"] == "no prompt shared with train (the build's split audit)"
    assert json.loads(result.provenance.read_text())["eval_rows"] == rows  # every row, by default
    prov = json.loads(result.provenance.read_text())["eval"]
    assert prov["split"] == "validation" and prov["metrics"]["eval_loss"] == result.eval_metrics["eval_loss"]
    assert prov["warnings"] == []


def test_grpo_evaluates_a_named_test_split_with_the_rewards_and_auto_leaves_it_alone(data, tiny_lm, tmp_path):
    grpo = {"num_generations": 2, "max_completion_length": 8}
    result = train("grpo", data / "grpo_held", str(tiny_lm), cfg(tmp_path, eval_split="test", eval_rows=2, **grpo))
    assert result.eval_split == "test"
    assert "eval_rewards/math_answer/mean" in result.eval_metrics and "eval_reward" in result.eval_metrics
    # eval_rows: a seeded sample of the split, not the whole benchmark generated for
    tests = json.loads((data / "grpo_held" / "dataforge.json").read_text())["splits"]["test"]["rows"]
    assert tests > 2 and json.loads(result.provenance.read_text())["eval_rows"] == 2
    # auto leaves a test split alone for grpo: generating for a whole benchmark is hours after training
    from datasets import load_from_disk

    report = check(load_from_disk(str(data / "grpo_held")), "grpo", load_tokenizer(str(tiny_lm)), 128)
    assert report.eval_split is None and "name it to evaluate on it" in dict(report.checks)["eval split"]
    with pytest.raises(TrainConfigError, match=r"eval_batch_size \(3\) must be a multiple of num_generations \(2\)"):
        train("grpo", data / "grpo_held", str(tiny_lm), cfg(tmp_path, eval_split="test", eval_batch_size=3, **grpo))


def test_without_an_eval_split_nothing_is_evaluated(data, tiny_lm, tmp_path):
    result = train("sft", data / "sft_held", str(tiny_lm), cfg(tmp_path, eval_split="none"))
    assert result.eval_split is None and result.eval_metrics is None
    assert not [e for e in result.log_history if "eval_loss" in e]
    tok = load_tokenizer(str(tiny_lm))
    from datasets import load_from_disk

    assert check(load_from_disk(str(data / "sft_held")), "sft", tok, 128, eval_split=None).eval_split is None  # null
    assert load_train_config(None, {"eval_split": None}).eval_split is None
    report = check(load_from_disk(str(data / "sft")), "sft", tok, 128)  # auto, and only a train split
    assert report.eval_split is None
    assert ("eval split", "none: no validation or test split (splits: train)") in report.checks


def test_a_bad_eval_split_is_refused_naming_the_splits(data, tiny_lm):
    from datasets import load_from_disk

    tok = load_tokenizer(str(tiny_lm))
    held = load_from_disk(str(data / "sft_held"))
    with pytest.raises(PreflightError, match=r"no split 'test' \(splits: train, validation\)"):
        check(held, "sft", tok, 128, eval_split="test")
    with pytest.raises(PreflightError, match="'train' is the split trained on"):
        check(held, "sft", tok, 128, eval_split="train")
    empty = DatasetDict({"train": held["train"], "validation": held["validation"].select([])})
    with pytest.raises(PreflightError, match="split 'validation' is empty"):
        check(empty, "sft", tok, 128, eval_split="validation")
    assert check(empty, "sft", tok, 128).eval_split is None  # auto passes an empty split by, and says so
    assert ("eval split", "none: split 'validation' is empty") in check(empty, "sft", tok, 128).checks


def test_an_eval_split_sharing_prompts_with_train_is_a_warning(data, tiny_lm, capsys):
    args = ["train", "sft", "--data", str(data / "sft_leaky"), "--model", str(tiny_lm), "--check"]
    assert main(args) == 0
    err = " ".join(capsys.readouterr().err.split())  # as one line, however the console wrapped it
    meta = json.loads((data / "sft_leaky" / "dataforge.json").read_text())
    shared = meta["splits"]["validation"]["rows"]
    assert 0 < shared < 24  # every short question is in train too
    assert f"warning: eval split 'validation' shares {shared} prompt(s)" in err and "its loss is not held out" in err
    assert main([*args[:-1], "--eval-split", "none", "--check"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_preflight_catches_a_mismatched_dataset(data, tiny_lm):
    from datasets import load_from_disk

    tok = load_tokenizer(str(tiny_lm))
    with pytest.raises(PreflightError, match=r"`sft` trains on .* this dataset is preference.*dataforge train dpo"):
        check(load_from_disk(str(data / "dpo")), "sft", tok, 128)
    with pytest.raises(PreflightError, match="`grpo` trains on prompt_only"):
        check(load_from_disk(str(data / "sft")), "grpo", tok, 128)
    with pytest.raises(PreflightError, match="columns the dataset lacks: final"):
        check(load_from_disk(str(data / "grpo")), "grpo", tok, 128, ["final"])
    report = check(load_from_disk(str(data / "sft")), "sft", tok, 64)
    st = report.splits["train"]
    assert st.rows == 24 and st.max_tokens > 64 and 0 < st.over_max_length <= 24


def test_preflight_catches_doubled_bos_and_a_missing_chat_template(tiny_lm):
    tok = load_tokenizer(str(tiny_lm))
    doubled = DatasetDict({"train": Dataset.from_dict({"text": ["[CLS] a document that starts with BOS"]})})
    with pytest.raises(PreflightError, match="doubled BOS"):
        check(doubled, "sft", tok, 128)
    fine = DatasetDict({"train": Dataset.from_dict({"text": ["a document"]})})
    assert ("BOS", "not doubled") in check(fine, "sft", tok, 128).checks
    tok.chat_template = None
    chat = DatasetDict({"train": Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]]})})
    with pytest.raises(PreflightError, match="no chat template"):
        check(chat, "sft", tok, 128)


def test_a_build_folder_given_as_data_names_its_datasets(data, tiny_lm, capsys):
    assert main(["train", "sft", "--data", str(data.parent), "--model", str(tiny_lm), "--check"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "a build folder, not a dataset; its datasets:" in err and str(data / "sft_held") in err


def test_cli_check_and_mismatch(data, tiny_lm, capsys):
    assert main(["train", "sft", "--data", str(data / "sft"), "--model", str(tiny_lm), "--check"]) == 0
    out = capsys.readouterr().out
    assert "language_modeling (conversational)" in out and "nothing trained" in out
    assert main(["train", "grpo", "--data", str(data / "dpo"), "--model", str(tiny_lm), "--check"]) == 1
    assert "this dataset is preference" in capsys.readouterr().err


def test_cli_trains_with_lora_flags(data, tiny_lm, tmp_path, capsys):
    args = ["train", "sft", "--data", str(data / "sft_held"), "--model", str(tiny_lm), "--max-steps", "2"]
    args += ["--batch-size", "2", "--max-length", "96", "--lora-r", "2", "--output-dir", str(tmp_path / "o")]
    assert main(args) == 0
    out = capsys.readouterr().out
    prov = json.loads((tmp_path / "o" / "dataforge_provenance.json").read_text())
    assert prov["config"]["lora"]["r"] == 2 and prov["config"]["max_steps"] == 2
    assert "trained sft" in out and f"{prov['eval']['metrics']['eval_loss']:.4f} (validation)" in out
    assert main([*args, "--eval-split", "none"]) == 0
    assert "no eval split" in capsys.readouterr().out


def test_training_config_errors_name_file_and_key(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("learning_rate: 1e-5\nepochz: 2\n")
    with pytest.raises(TrainConfigError, match=r"train.yaml: key 'epochz'"):
        load_train_config(path)
    path.write_text("lora: {r: 0}\n")
    with pytest.raises(TrainConfigError, match=r"key 'lora.r'"):
        load_train_config(path)
    assert load_train_config(path, {"lora": {"r": 8}}).lora.r == 8


def test_grpo_batch_must_hold_whole_groups(data, tiny_lm, tmp_path):
    with pytest.raises(TrainConfigError, match="multiple of num_generations"):
        train("grpo", data / "grpo", str(tiny_lm), cfg(tmp_path, batch_size=3, num_generations=2))


def test_trace_goes_from_a_model_back_to_its_build(data, tiny_lm, tmp_path, capsys):
    import shutil

    build_dir = tmp_path / "build"
    shutil.copytree(data.parent, build_dir)  # a build of our own: this test edits it
    sft = build_dir / "datasets" / "sft"
    result = train("sft", sft, str(tiny_lm), cfg(tmp_path))
    assert not list(sft.glob("*/cache-*.arrow"))  # TRL's tokenized copies stay out of the build
    meta = json.loads((sft / "dataforge.json").read_text())

    assert main(["trace", str(result.output_dir)]) == 0
    text = capsys.readouterr().out
    assert meta["run_id"] in text and "unchanged since training" in text and "(succeeded)" in text

    (sft / "dataforge.json").write_text(json.dumps({**meta, "fingerprint": "0" * 16}))
    (build_dir / "lineage.duckdb").unlink()
    assert main(["trace", str(result.output_dir)]) == 0
    text = capsys.readouterr().out
    assert "rebuilt since training" in text and "lineage" in text and "missing" in text
    assert main(["trace", str(tmp_path)]) == 1
    assert "no dataforge_provenance.json" in capsys.readouterr().err


def test_grpo_rewards_load_without_the_build_dependencies():
    """A training machine has TRL but not necessarily polars, duckdb or datasketch: the GRPO rewards
    (dataforge graders) must load without them. On the GPU machine they did not: the `reasoning`
    module imported polars at the top, and GRPO failed before training."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules.update(polars=None, duckdb=None, datasketch=None)\n"
        "from trainers import TrainConfig\n"
        "from trainers.run import reward_functions\n"
        "funcs, weights, columns = reward_functions(TrainConfig())\n"
        "done = '<think>2+2</think><answer>4</answer>'\n"
        "print(funcs[0](prompts=['q'], completions=[done], answer=['4']), weights, columns)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1.0] [1.0, 0.2] ['answer']"


def _built(tmp_path: Path, rows: list[dict], steps: str, dataset: str) -> Path:
    """``rows`` as ``data.jsonl`` (source ``src``, ids ``data:N``), built by a recipe of ``steps``
    (YAML lines after the source) exporting ``dataset`` from its step ``sft``; the dataset's folder."""
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "recipe.yaml").write_text(
        f"name: {dataset}\nsteps:\n  src: {{kind: source, path: data.jsonl, name: data}}\n{steps}"
        f"datasets:\n  {dataset}: {{splits: {{train: sft.train}}}}\n"
    )
    build(tmp_path / "recipe.yaml", tmp_path / "build", show_progress=False)
    return tmp_path / "build" / "datasets" / dataset


TOOL_TEMPLATE = (
    "{{ bos_token }}{% if tools %}tools: {{ tools | tojson }}{{ eos_token }}{% endif %}"
    "{% for m in messages %}{{ m['role'] }}: {% if m['tool_calls'] %}{% for c in m['tool_calls'] %}"
    "call {{ c['function']['name'] }}({{ c['function']['arguments'] }}){% endfor %}{% else %}{{ m['content'] }}"
    "{% endif %}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_tool_calling_conversations_build_pass_the_preflight_and_train(tiny_lm, tmp_path):
    """OpenAI-format tool-use data (an assistant turn that only calls a tool, a tool turn with the
    result, a `tools` column) goes from a JSONL source through `format` to TRL's SFT trainer, the
    calls rendered by the model's chat template."""
    import shutil

    tools = json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
    rows = []
    for i, city in enumerate(["Paris", "Lyon", "Nice", "Lille"]):
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'},
        }
        convo = [
            {"role": "user", "content": f"Weather in {city}?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": f'{{"temp": {10 + i}}}', "tool_call_id": f"c{i}"},
        ]
        rows.append({"conversation": convo, "answer": f"It is {10 + i} °C in {city}.", "tools": tools})
    sft = "  sft: {kind: format, type: messages, inputs: {train: src}, prompt: conversation, completion: answer"
    data = _built(tmp_path, rows, sft + ", extra: {tools: tools}}\n", "tool_sft")
    from datasets import load_from_disk

    turns = load_from_disk(str(data))["train"][1]["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "tool", "assistant"]
    assert turns[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Lyon"}' and turns[2]["tool_call_id"] == "c1"

    model = tmp_path / "model"
    shutil.copytree(tiny_lm, model)
    tok = load_tokenizer(str(model))
    tok.chat_template = TOOL_TEMPLATE
    tok.save_pretrained(str(model))
    report = check(load_from_disk(str(data)), "sft", tok, 256)
    assert dict(report.checks)["chat template"].startswith("renders every row")
    from trainers.preflight import _token_ids

    rendered = tok.decode(_token_ids(tok, load_from_disk(str(data))["train"][1], "language_modeling")[0])
    assert "call get _ weather" in rendered and "lyon" in rendered and "tools :" in rendered  # WordPiece decoding
    assert_trained(train("sft", data, str(model), cfg(tmp_path, max_length=256)), data)


def test_sharegpt_conversations_build_through_parse_chat_pass_the_preflight_and_train(tiny_lm, tmp_path):
    """ShareGPT data ({from, value} turns; human / gpt roles), the form most open chat sets come in,
    could not be built: no step read its turns, and `format` took no whole conversations."""
    rows = []
    for i in range(6):
        turns = [{"from": "human", "value": f"What is {i} + {i}?"}, {"from": "gpt", "value": f"It is {2 * i}."}]
        if i % 2:
            turns = [{"from": "system", "value": "Answer in one sentence."}, *turns]
        rows.append({"conversations": turns})
    rows.append(rows[0])  # a copy
    rows.append({"conversations": [{"from": "human", "value": "Hello?"}]})  # nothing answered
    steps = (
        "  chat: {kind: parse.chat, inputs: {train: src}, fields: [conversations]}\n"
        "  dedup: {kind: dedup.exact, inputs: {data: chat.train}, fields: [conversations]}\n"
        "  sft: {kind: format, type: messages, inputs: {train: dedup}, messages: conversations}\n"
    )
    data = _built(tmp_path, rows, steps, "chat_sft")
    from datasets import load_from_disk

    from dataforge.lineage import open_read

    train_split = load_from_disk(str(data))["train"]
    assert train_split["_id"] == [f"data:{i}" for i in range(6)]
    assert train_split[1]["messages"] == [
        {"role": "system", "content": "Answer in one sentence."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "It is 2."},
    ]
    con = open_read(tmp_path / "build")
    dropped = con.execute("SELECT row_id, reason FROM latest_events WHERE action = 'dropped' ORDER BY 1").fetchall()
    assert dropped == [("data:6", "exact_duplicate"), ("data:7", "format:no_response")]
    report = check(load_from_disk(str(data)), "sft", load_tokenizer(str(tiny_lm)), 128)
    assert dict(report.checks)["chat template"].startswith("renders every row")
    assert_trained(train("sft", data, str(tiny_lm), cfg(tmp_path)), data)


STRICT_TEMPLATE = (
    "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ m['role'] }}: {{ m['content'] }}{{ eos_token }}{% endfor %}"
)


def test_preflight_renders_every_row_and_names_the_one_the_template_refuses(tiny_lm, monkeypatch):
    """The pre-flight rendered the first three rows only; a conversation further on that the
    template refuses (two user turns in a row, as nine HH-RLHF transcripts hold, under a template
    that wants roles to alternate) failed TRL's preparation with the template's error and no row."""
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    good = [turn("user", "Hi"), turn("assistant", "Hello")]
    rows = [good] * 5 + [[turn("user", "Hi"), turn("user", "Are you there?"), turn("assistant", "Yes")]]
    dataset = DatasetDict(
        {
            "train": Dataset.from_dict({"_id": [f"c:{i}" for i in range(6)], "messages": rows}),
            "test": Dataset.from_dict({"_id": ["t:0"], "messages": [good]}),
        }
    )
    tok = load_tokenizer(str(tiny_lm))
    assert dict(check(dataset, "sft", tok, 128).checks)["chat template"] == "renders every row (7)"
    tok.chat_template = STRICT_TEMPLATE
    refused = r"does not render row 5 \(c:5\) of train: Conversation roles must alternate"
    with pytest.raises(PreflightError, match=refused):
        check(dataset, "sft", tok, 128)
    # a split larger than its measured sample: the rows the statistics do not tokenize are rendered too
    import trainers.preflight as preflight

    monkeypatch.setattr(preflight, "MAX_ROWS_MEASURED", 2)
    assert 5 not in preflight._measured_rows(6)
    with pytest.raises(PreflightError, match=refused):
        check(dataset, "sft", tok, 128)


def test_resume_goes_on_from_the_last_checkpoint_of_the_same_run_only(data, tiny_lm, tmp_path):
    first = train("sft", data / "sft", str(tiny_lm), cfg(tmp_path, save_steps=1))
    assert (first.output_dir / "checkpoint-2").is_dir()
    more = train("sft", data / "sft", str(tiny_lm), cfg(tmp_path, max_steps=3, save_steps=1, resume=True))
    assert more.steps == 3 and math.isfinite(more.train_loss)
    assert json.loads(more.provenance.read_text())["resumed_from"].endswith("checkpoint-2")
    # a checkpoint trained on other data, or by another trainer, is not gone on from silently
    with pytest.raises(TrainConfigError, match=r"resume: the checkpoints in .* were trained with dataset"):
        train("sft", data / "sft_pc", str(tiny_lm), cfg(tmp_path, max_steps=4, resume=True))
    with pytest.raises(TrainConfigError, match=r"holds the checkpoints of an earlier run \(checkpoint-3\)"):
        train("sft", data / "sft", str(tiny_lm), cfg(tmp_path, save_steps=1))  # a fresh run over them
    with pytest.raises(TrainConfigError, match=r"resume: no checkpoint-N folder in"):
        train("sft", data / "sft", str(tiny_lm), cfg(tmp_path / "elsewhere", resume=True))
