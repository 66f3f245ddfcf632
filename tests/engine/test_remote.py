"""Builds published to an object store (``--out s3://…``, ``engine.remote``), against a real S3 API:
moto's server on loopback, spoken to by pyarrow's S3 filesystem over HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest

from dataforge.cli import main
from dataforge.engine import remote
from dataforge.engine.remote import CLAIMS, GCS_RETRY_SECONDS, MANIFEST, RemoteBuild, RemoteChangedError, staging_folder
from dataforge.engine.runner import build
from dataforge.engine.store import MARKER
from dataforge.errors import OutputDirError
from tests.engine.conftest import _stored
from tests.engine.test_runner import _tree_hashes


def _datasets(files: dict[str, bytes]) -> dict[str, str]:
    return {
        rel: hashlib.sha256(data).hexdigest()
        for rel, data in files.items()
        if rel.startswith("datasets/") and not rel.endswith("dataforge.json")
    }


def test_a_build_published_to_s3_holds_the_local_builds_datasets_and_answers_queries(qa, tmp_path, s3, capsys):
    _, recipe = qa
    uri, fs, prefix = s3
    build(recipe, tmp_path / "local", show_progress=False)
    local = {f"datasets/{k}": v for k, v in _tree_hashes(tmp_path / "local" / "datasets").items()}

    assert main(["build", str(recipe), "--out", uri, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"published to {uri}" in printed and f"{uri.split('?')[0]}/datasets/qa_sft" in printed
    stored = _stored(fs, prefix)
    manifest = json.loads(stored[MANIFEST])
    assert _datasets(stored) == local and local
    assert set(manifest["files"]) == set(stored) - {MANIFEST}
    assert {"lineage.duckdb", ".dataforge.json", "report.html"} <= set(stored)
    assert not any(rel.startswith((".tmp/", "scratch/")) or rel == ".dataforge.lock" for rel in stored)
    assert all(len(stored[rel]) == size for rel, size in manifest["files"].items())

    # the lineage answers from the store, as from a local folder, in a staging folder of its own
    sql = "SELECT action, count(*) AS n FROM latest_events GROUP BY 1 ORDER BY 1"
    assert main(["query", "--out", str(tmp_path / "local"), sql, "--format", "json"]) == 0
    from_local = json.loads(capsys.readouterr().out)
    assert main(["query", "--out", uri, sql, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == from_local and from_local
    assert main(["why", "raw:2", "--out", uri]) == 0
    assert "dropped" in capsys.readouterr().out


def test_a_second_machine_brings_the_build_down_and_reuses_every_step(qa, tmp_path, s3, monkeypatch):
    _, recipe = qa
    uri, fs, prefix = s3
    first = build(recipe, uri, show_progress=False)
    assert first.published == uri and first.sent is not None and first.sent.copied > 0
    before = _stored(fs, prefix)
    with fs.open_output_stream(f"{prefix}/datasets/stray/part.arrow") as f:
        f.write(b"not the build's")

    again = build(recipe, uri, show_progress=False)  # the same machine: nothing runs, only what changed is sent
    assert again.executed == [] and again.sent is not None
    assert again.sent.unchanged > 0 and again.sent.copied < first.sent.copied
    assert again.sent.deleted == 1 and "datasets/stray/part.arrow" not in _stored(fs, prefix)

    monkeypatch.setenv("DATAFORGE_STAGING", str(tmp_path / "other-machine"))
    other = build(recipe, uri, show_progress=False)
    assert other.executed == [] and Path(other.out).is_relative_to(tmp_path / "other-machine")
    after = _stored(fs, prefix)
    assert _datasets(after) == _datasets(before)


def test_a_publish_that_stopped_midway_is_completed_by_the_next_build(qa, tmp_path, s3, monkeypatch):
    """No manifest means "not finished": a build elsewhere brings down what is there, writes again
    what is missing and publishes it whole."""
    _, recipe = qa
    uri, fs, prefix = s3
    build(recipe, uri, show_progress=False)
    full = _stored(fs, prefix)
    lost = next(rel for rel in full if rel.startswith("datasets/qa_sft/") and rel.endswith(".arrow"))
    fs.delete_file(f"{prefix}/{MANIFEST}")
    fs.delete_file(f"{prefix}/{lost}")

    monkeypatch.setenv("DATAFORGE_STAGING", str(tmp_path / "elsewhere"))
    report = build(recipe, uri, show_progress=False)
    assert report.executed == []  # every artifact came down whole and was reused
    after = _stored(fs, prefix)
    assert MANIFEST in after and after[lost] == full[lost]
    assert _datasets(after) == _datasets(full)


def test_a_build_whose_store_changed_while_it_ran_sends_nothing_and_the_next_one_builds_on_it(
    qa, tmp_path, s3, monkeypatch
):
    """Machine B brings the build down and runs; machine A publishes meanwhile. B's publish would
    put back a build made from the older state, so it sends nothing and says what changed; run
    again, B brings down A's publish and publishes on top of it."""
    _, recipe = qa
    uri, fs, prefix = s3
    monkeypatch.setenv("DATAFORGE_STAGING", str(tmp_path / "machine-a"))
    build(recipe, uri, show_progress=False)
    probe = RemoteBuild.probe
    published: list[str] = []
    as_a_left_it: list[dict[str, bytes]] = []

    def machine_a_publishes_meanwhile(self: RemoteBuild) -> None:
        probe(self)
        if not self.local.is_relative_to(tmp_path / "machine-b"):
            return  # machine A's own build
        with monkeypatch.context() as m:
            m.setenv("DATAFORGE_STAGING", str(tmp_path / "machine-a"))
            published.append(build(recipe, uri, show_progress=False).run_id)
        as_a_left_it.append(_stored(fs, prefix))

    monkeypatch.setenv("DATAFORGE_STAGING", str(tmp_path / "machine-b"))
    with monkeypatch.context() as m:
        m.setattr(RemoteBuild, "probe", machine_a_publishes_meanwhile)
        with pytest.raises(RemoteChangedError, match=r"the store changed while this build ran \(run "):
            build(recipe, uri, show_progress=False)
    stored = _stored(fs, prefix)
    assert json.loads(stored[MANIFEST])["run_id"] == published[0] and stored == as_a_left_it[0]  # B sent nothing

    # a publish under way elsewhere (its manifest removed) stops B the same way
    with monkeypatch.context() as m:
        m.setattr(RemoteBuild, "probe", lambda self: fs.delete_file(f"{prefix}/{MANIFEST}"))
        with pytest.raises(RemoteChangedError, match=r"its manifest is gone: a publish from another machine"):
            build(recipe, uri, show_progress=False)
    assert MANIFEST not in _stored(fs, prefix)
    with fs.open_output_stream(f"{prefix}/{MANIFEST}") as f:  # the other machine's publish ends
        f.write(stored[MANIFEST])

    again = build(recipe, uri, show_progress=False)
    assert again.sent is not None and json.loads(_stored(fs, prefix)[MANIFEST])["run_id"] == again.run_id


def _claim(fs, prefix: str, **fields) -> str:
    """A publish claim of another publish under way (``engine.remote``), written to the store."""
    path = f"{prefix}/{CLAIMS}/other.json"
    claim = {"host": "machine-a", "pid": 4242, "run_id": "run-a", "since": "2026-12-05T10:00:00+00:00", **fields}
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(claim).encode())
    return path


def _claims(fs, prefix: str) -> list[str]:
    return sorted(rel for rel in _stored(fs, prefix) if rel.startswith(f"{CLAIMS}/"))


def test_a_publish_under_way_elsewhere_stops_a_publish_before_it_sends_anything_and_one_that_died_does_not(
    qa, tmp_path, s3, monkeypatch
):
    """Another machine's live claim: the build sends nothing and names that publish; a claim gone
    stale (by the store's clock) or from a process of this host that is gone is removed, and the
    build publishes. Claims are neither brought down nor published."""
    import socket
    import subprocess

    _, recipe = qa
    uri, fs, prefix = s3
    build(recipe, uri, show_progress=False)
    before = _stored(fs, prefix)
    assert _claims(fs, prefix) == []  # a publish removes its own claim
    _claim(fs, prefix)
    under_way = r"another publish is under way \(run run-a from machine-a, pid 4242"
    with pytest.raises(RemoteChangedError, match=under_way) as e:
        build(recipe, uri, show_progress=False, force=["clean"])
    assert f"{uri.split('?')[0]}/{CLAIMS}/other.json, which counts as dead 10 minutes after" in str(e.value)
    after = _stored(fs, prefix)
    assert _claims(fs, prefix) == [f"{CLAIMS}/other.json"]  # its own claim removed
    assert {k: v for k, v in after.items() if not k.startswith(CLAIMS)} == before  # nothing sent
    assert not any(CLAIMS in str(p) for p in staging_folder(uri).rglob("*"))  # nor brought down

    with monkeypatch.context() as m:
        m.setattr(remote, "CLAIM_STALE_SECONDS", 0.0)  # every other claim is stale
        stale = build(recipe, uri, show_progress=False)
    assert stale.sent is not None and _claims(fs, prefix) == []

    gone = subprocess.Popen(["true"])
    gone.wait()
    _claim(fs, prefix, host=socket.gethostname(), pid=gone.pid)
    assert build(recipe, uri, show_progress=False).sent is not None and _claims(fs, prefix) == []
    _claim(fs, prefix, host=socket.gethostname(), pid=os.getpid())  # a live process of this host
    with pytest.raises(RemoteChangedError, match="another publish is under way"):
        build(recipe, uri, show_progress=False)


def test_with_wait_a_publish_stopped_by_another_waits_and_builds_on_what_that_one_published(
    qa, tmp_path, s3, monkeypatch, capsys
):
    """``--wait``: machine B's publish, stopped by machine A's (under way), waits; meanwhile A's
    publish ends with a newer run; B brings it down, builds on it (every step reused) and
    publishes on top."""
    _, recipe = qa
    uri, fs, prefix = s3
    monkeypatch.setenv("DATAFORGE_STAGING", str(tmp_path / "machine-a"))
    build(recipe, uri, show_progress=False)
    monkeypatch.setenv("DATAFORGE_STAGING", str(tmp_path / "machine-b"))
    monkeypatch.setattr(remote, "PUBLISH_WAIT_SECONDS", 0.0)
    claim = _claim(fs, prefix)  # A is publishing again
    pull, pulls, newer = RemoteBuild.pull, [], []

    def a_finishes_while_b_waits(self, *args, **kwargs):
        pulls.append(1)
        if len(pulls) == 2:  # B stopped and waited: A's publish ends with a newer run
            fs.delete_file(claim)
            with monkeypatch.context() as m:
                m.setattr(RemoteBuild, "pull", pull)
                m.setenv("DATAFORGE_STAGING", str(tmp_path / "machine-a"))
                newer.append(build(recipe, uri, show_progress=False, force=["clean"]).run_id)
        return pull(self, *args, **kwargs)

    monkeypatch.setattr(RemoteBuild, "pull", a_finishes_while_b_waits)
    report = build(recipe, uri, show_progress=False, wait=True)
    told = capsys.readouterr().err
    assert "another publish is under way (run run-a from machine-a" in told
    assert "nothing was sent. Waiting 0 s, then bringing down what the store holds and building on it" in told
    assert len(pulls) == 2 and newer and report.executed == []  # built on A's newer publish
    manifest = json.loads(_stored(fs, prefix)[MANIFEST])
    assert manifest["run_id"] == report.run_id != newer[0] and _claims(fs, prefix) == []


def test_a_long_publish_keeps_its_claim_fresh_and_two_that_list_at_once_both_stop(qa, tmp_path, s3, monkeypatch):
    """A publish rewrites its claim while it runs; two publishes that each wrote a claim before
    either listed both stop, sending nothing (neither can tell it came first)."""
    import threading

    _, recipe = qa
    uri, fs, prefix = s3
    build(recipe, tmp_path / "built", show_progress=False)
    seen: list[dict] = []
    publish = RemoteBuild._publish

    def slow(self, run_id, console):
        for _ in range(2):
            (only,) = _claims(fs, prefix)
            seen.append(json.loads(_stored(fs, prefix)[only]))
            time.sleep(1.2)
        return publish(self, run_id, console)

    with monkeypatch.context() as m:
        m.setattr(remote, "CLAIM_REFRESH_SECONDS", 0.1)
        m.setattr(RemoteBuild, "_publish", slow)
        RemoteBuild(uri, tmp_path / "built").publish("run-1")
    assert seen[0]["since"] == seen[1]["since"] and seen[1]["refreshed"] > seen[0]["refreshed"]
    assert _claims(fs, prefix) == [] and MANIFEST in _stored(fs, prefix)
    fs.delete_dir_contents(prefix)

    both_wrote = threading.Barrier(2, timeout=30)
    live_claim = RemoteBuild._live_claim

    def after_both_wrote(self, mine):
        both_wrote.wait()
        return live_claim(self, mine)

    monkeypatch.setattr(RemoteBuild, "_live_claim", after_both_wrote)
    errors: list[BaseException] = []

    def machine(name: str) -> None:
        try:
            RemoteBuild(uri, tmp_path / "built").publish(name)
        except RemoteChangedError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=machine, args=(n,)) for n in ("run-a", "run-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 2 and all("another publish is under way" in str(e) for e in errors)
    assert _stored(fs, prefix) == {}  # neither sent anything, and both claims are gone


def test_a_prefix_holding_files_dataforge_did_not_write_is_refused_and_left_alone(qa, s3):
    _, recipe = qa
    uri, fs, prefix = s3
    with fs.open_output_stream(f"{prefix}/notes.txt") as f:
        f.write(b"mine")
    with pytest.raises(OutputDirError, match=r"holds files dataforge did not write \(notes\.txt"):
        build(recipe, uri, show_progress=False)
    assert _stored(fs, prefix) == {"notes.txt": b"mine"}


def test_a_bucket_that_does_not_exist_stops_the_build_before_it_runs(qa, s3):
    _, recipe = qa
    uri, _, _ = s3
    missing = uri.replace("s3://builds/", "s3://no-such-bucket/")
    with pytest.raises(OutputDirError, match=r"s3://no-such-bucket/.*cannot write there \(checked before building\)"):
        build(recipe, missing, show_progress=False)
    staging = RemoteBuild(missing).local
    assert not (staging / "artifacts").exists()


def test_plan_export_and_report_take_a_published_build(qa, tmp_path, s3, monkeypatch, capsys):
    """``plan`` reads the manifest only; ``export`` brings the build down and writes the Hub layout
    a local build's export writes; ``report`` writes the report in the staging folder and publishes
    that one file, the manifest keeping the build's run."""
    _, recipe = qa
    uri, fs, prefix = s3
    bare = uri.split("?", 1)[0]

    def plan_cached() -> list[str]:
        assert main(["plan", str(recipe), "--out", uri]) == 0
        printed = capsys.readouterr().out
        said = " ".join(printed.split())
        assert f"(out: {bare})" in said
        published = "no finished build is published" not in said
        cached = re.findall(r"│\s*(yes|no)\s*│\s*$", printed, flags=re.MULTILINE)
        assert published == ("yes" in cached)
        return cached

    assert set(plan_cached()) == {"no"}  # nothing published yet
    local = build(recipe, tmp_path / "local", show_progress=False)
    build(recipe, uri, show_progress=False)
    monkeypatch.setenv("DATAFORGE_STAGING", str(tmp_path / "reader"))
    assert plan_cached() == ["yes"] * len(local.steps)
    assert not (tmp_path / "reader").exists()  # the manifest said it: nothing came down

    assert main(["export", "--out", str(tmp_path / "local"), "--hub", str(tmp_path / "hub-local")]) == 0
    assert main(["export", "--out", uri, "--hub", str(tmp_path / "hub-remote")]) == 0
    capsys.readouterr()
    assert _tree_hashes(tmp_path / "hub-remote") == _tree_hashes(tmp_path / "hub-local") != {}

    before = _stored(fs, prefix)
    monkeypatch.setenv("DATAFORGE_STAGING", str(tmp_path / "reporter"))
    assert main(["report", "--out", uri]) == 0
    assert f"published to {bare}/report.html (1 file(s) sent)" in capsys.readouterr().out.replace("\n", "")
    after = _stored(fs, prefix)
    staged = RemoteBuild(uri).local
    assert staged.is_relative_to(tmp_path / "reporter")
    assert after["report.html"] == (staged / "report.html").read_bytes()
    assert json.loads(after[MANIFEST])["run_id"] == json.loads(before[MANIFEST])["run_id"]
    assert {k: v for k, v in after.items() if k not in ("report.html", MANIFEST)} == {
        k: v for k, v in before.items() if k not in ("report.html", MANIFEST)
    }


def test_report_while_a_build_uses_the_staging_folder_stops_and_sends_nothing(qa, s3, capsys):
    """``report`` on a URI publishes, so it needs the staging folder to itself: while a build or
    reader on this machine holds it, it stops, saying so, and sends nothing."""
    _, recipe = qa
    uri, fs, prefix = s3
    build(recipe, uri, show_progress=False)
    before = _stored(fs, prefix)
    with RemoteBuild(uri).held():
        assert main(["report", "--out", uri]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "a build or reader on this machine is using its staging folder" in err and "run this again" in err
    assert _stored(fs, prefix) == before


def test_report_on_a_prefix_with_no_build_is_told_so_and_publishes_nothing(s3, capsys):
    uri, fs, prefix = s3
    assert main(["report", "--out", uri]) == 1
    assert f"no build published at {uri}" in capsys.readouterr().err.replace("\n", "")
    assert _stored(fs, prefix) == {}


def test_train_takes_a_published_dataset_and_names_one_the_build_lacks(qa, s3, tiny_lm, capsys):
    """``dataforge train --data <build URI>/datasets/<name>``: a training machine reads what a build
    machine published; the pre-flight names the build that made it."""
    _, recipe = qa
    uri, _, _ = s3
    built = build(recipe, uri, show_progress=False)
    shutil.rmtree(staging_folder(uri))  # the training machine has none of it
    bare, _, query = uri.partition("?")
    data = f"{bare}/datasets/qa_sft?{query}"
    assert main(["train", "sft", "--data", data, "--model", str(tiny_lm), "--check"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "pre-flight passed" in printed and f"run {built.run_id}" in printed
    (pulled,) = staging_folder(uri).parent.glob("*-dataset-qa_sft")  # the dataset and its lineage only
    got = {str(p.relative_to(pulled)) for p in pulled.rglob("*") if p.is_file()}
    assert got and all(rel in (MARKER, "lineage.duckdb") or rel.startswith("datasets/qa_sft/") for rel in got)
    assert "lineage.duckdb" in got and not (pulled / "artifacts").exists()
    assert not staging_folder(uri).exists()  # the build's own staging folder: not brought down

    assert main(["train", "sft", "--data", f"{bare}/datasets/nope?{query}", "--model", str(tiny_lm)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "has no dataset 'nope' (it has: qa_sft)" in err
    assert main(["train", "sft", "--data", f"{bare}?{query}", "--model", str(tiny_lm)]) == 1
    assert "give a published dataset, <build URI>/datasets/<name>" in " ".join(capsys.readouterr().err.split())


def test_a_reader_of_a_prefix_with_no_build_is_told_so(s3, capsys):
    uri, _, _ = s3
    assert main(["query", "--out", uri, "SELECT 1"]) == 1
    assert f"no build published at {uri}" in capsys.readouterr().err.replace("\n", "")


def test_a_gcs_uri_is_retried_for_a_bounded_time_unless_it_names_one():
    """Without a network or credentials the GCS client's default retries for many minutes in
    silence; dataforge bounds it (``GCS_RETRY_SECONDS``) unless the URI sets its own limit, which
    leaves the staging folder as it was (the key ignores the query string)."""

    def limit(uri: str) -> timedelta:
        return RemoteBuild(uri).fs.__reduce__()[1][0]["retry_time_limit"]

    assert limit("gs://bucket/builds/x") == timedelta(seconds=GCS_RETRY_SECONDS)
    assert limit("gs://bucket/builds/x?retry_limit_seconds=5") == timedelta(seconds=5)
    assert limit("gs://bucket/builds/x?scheme=https") == timedelta(seconds=GCS_RETRY_SECONDS)
    assert RemoteBuild("gs://bucket/builds/x").local == RemoteBuild("gs://bucket/builds/x?retry_limit_seconds=5").local


@pytest.mark.parametrize("uri", ["s3://bucket", "s3://bucket/", "gs://bucket?retry_limit_seconds=5"])
def test_a_bare_bucket_is_refused_before_the_store_is_reached(uri):
    """A bucket without a prefix is refused from the URI alone: pyarrow would first look the
    bucket's region up over the network, and without one the error named the network instead."""
    with pytest.raises(OutputDirError, match=r"give a prefix inside the bucket"):
        RemoteBuild(uri)


def test_an_unknown_scheme_is_an_error_naming_it_and_makes_no_folder(qa, tmp_path, monkeypatch):
    _, recipe = qa
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputDirError, match=r"nosuch://bucket/b: cannot open it as a filesystem URI"):
        build(recipe, "nosuch://bucket/b", show_progress=False)
    assert not (tmp_path / "nosuch:").exists() and not (tmp_path / "staging").exists()


def test_a_build_on_ray_publishes_the_same_datasets(qa, tmp_path, s3, ray_local):
    _, recipe = qa
    uri, fs, prefix = s3
    build(recipe, tmp_path / "local", show_progress=False)
    report = build(recipe, uri, show_progress=False, executor="ray")
    assert report.cluster is not None
    local = {f"datasets/{k}": v for k, v in _tree_hashes(tmp_path / "local" / "datasets").items()}
    assert _datasets(_stored(fs, prefix)) == local
