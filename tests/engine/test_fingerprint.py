"""Fingerprints: stable across processes and key order; they change with version, config, inputs."""

from __future__ import annotations

import subprocess
import sys

from dataforge.engine.fingerprint import canonical_json, step_fingerprint
from dataforge.engine.plan import plan_recipe


def test_canonical_json_ignores_key_order():
    assert canonical_json({"b": 1, "a": [1, {"y": 2, "x": 1}]}) == canonical_json({"a": [1, {"x": 1, "y": 2}], "b": 1})


def test_same_recipe_same_fingerprints_in_another_process(qa):
    _ws, recipe = qa
    here = {s.name: s.fingerprint for s in plan_recipe(recipe).steps}
    code = (
        "import json,sys; from dataforge.engine.plan import plan_recipe;"
        "print(json.dumps({s.name: s.fingerprint for s in plan_recipe(sys.argv[1]).steps}))"
    )
    there = subprocess.run([sys.executable, "-c", code, str(recipe)], capture_output=True, text=True, check=True)
    import json

    assert json.loads(there.stdout) == here


def test_version_bump_changes_fingerprint():
    base = step_fingerprint("dedup.exact", 1, {"fields": ["a"]}, {"data": "x:data"})
    assert step_fingerprint("dedup.exact", 2, {"fields": ["a"]}, {"data": "x:data"}) != base
    assert step_fingerprint("dedup.exact", 1, {"fields": ["b"]}, {"data": "x:data"}) != base
    assert step_fingerprint("dedup.exact", 1, {"fields": ["a"]}, {"data": "y:data"}) != base
    assert step_fingerprint("dedup.exact", 1, {"fields": ["a"]}, {"data": "x:data"}) == base


def test_config_change_propagates_downstream_only(qa):
    _ws, recipe = qa
    before = {s.name: s.fingerprint for s in plan_recipe(recipe).steps}
    recipe.write_text(recipe.read_text().replace("min_length: 10", "min_length: 11"))
    after = {s.name: s.fingerprint for s in plan_recipe(recipe).steps}
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"filtered", "parsed", "sft"}


def test_source_fingerprint_follows_file_content(qa):
    ws, recipe = qa
    before = plan_recipe(recipe).steps[0].fingerprint
    path = ws.root / "qa.jsonl"
    path.write_text(path.read_text().replace("two plus two", "two plus 2"))
    assert plan_recipe(recipe).steps[0].fingerprint != before


def test_file_hash_cache_follows_changes(tmp_path, monkeypatch):
    from dataforge.engine.fingerprint import cached_file_sha256, file_sha256

    monkeypatch.setenv("DATAFORGE_CACHE_DIR", str(tmp_path / "cache"))
    big = tmp_path / "big.bin"
    big.write_bytes(b"a" * (2 << 20))
    assert cached_file_sha256(big) == file_sha256(big)
    assert (tmp_path / "cache" / "file_sha256.json").exists()
    big.write_bytes(b"b" * (2 << 20))  # same size, new content and mtime
    assert cached_file_sha256(big) == file_sha256(big)
