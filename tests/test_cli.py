"""The CLI is a thin, documented layer: every command and option is in the README."""

from __future__ import annotations

import argparse
import re

import pytest

from dataforge.cli import main, make_parser
from tests.conftest import REPO


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = make_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_option_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name, sub in _subcommands().items():
        assert re.search(rf"`dataforge {name}\b", readme), f"command {name} is not in the README"
        for action in sub._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in readme, f"option {opt} of {name} is not in the README"


@pytest.mark.parametrize("command", ["build", "plan", "why", "query"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_plan_shows_fingerprints_and_cache_state(qa, capsys):
    ws, recipe = qa
    assert main(["plan", str(recipe), "--out", str(ws.out)]) == 0
    first = capsys.readouterr().out
    assert "filtered" in first and "no" in first and not ws.out.exists()  # plan runs nothing
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["plan", str(recipe), "--out", str(ws.out)]) == 0
    table = capsys.readouterr().out
    assert table.count("yes") == 5


def test_build_summary_and_cached_message(qa, capsys):
    ws, recipe = qa
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "filter:min_length: 1" in text and "5 step(s) executed" in text
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    assert "Nothing to execute" in capsys.readouterr().out


def test_why_unknown_row(qa, capsys):
    ws, recipe = qa
    main(["build", str(recipe), "--out", str(ws.out), "--quiet"])
    capsys.readouterr()
    assert main(["why", "raw:999", "--out", str(ws.out)]) == 1
    assert "does not appear" in capsys.readouterr().err


def test_query_error_is_clean(qa, capsys):
    ws, recipe = qa
    main(["build", str(recipe), "--out", str(ws.out), "--quiet"])
    capsys.readouterr()
    assert main(["query", "--out", str(ws.out), "SELECT nope FROM events"]) == 1
    assert "query failed" in capsys.readouterr().err


def test_query_without_build(tmp_path, capsys):
    assert main(["query", "--out", str(tmp_path / "none"), "SELECT 1"]) == 1
    assert "no lineage database" in capsys.readouterr().err
