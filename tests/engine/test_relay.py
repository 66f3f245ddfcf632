"""The relay of a build's files through its object store (``engine.relay``), piece by piece,
against moto's S3 server on loopback: what a task's arguments name, what a node brings down and
sends back, what the driver brings in. A whole build through it, on a node that does not see the
build folder, is in ``tests/engine/test_ray.py``."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dataforge.engine import relay
from dataforge.engine.relay import Needed, Relay, bring, named_paths, send_back, versions
from dataforge.engine.remote import RELAY
from dataforge.errors import DataforgeError
from tests.engine.conftest import _stored


@dataclass(frozen=True)
class _Spec:
    cache: Path
    whole: dict[str, list[str]]


class _Holder:
    def __init__(self, files: list[Path]):
        self.files = files
        self.frame = pl.DataFrame({"a": [1]})


def _reader(path: str, job: int) -> int:
    return job


def test_the_paths_a_tasks_arguments_name_are_found_wherever_they_are_held(tmp_path):
    root = tmp_path / "build"
    inside = [str(root / f"f{i}") for i in range(8)]
    captured = inside[6]

    def closure() -> str:
        return captured

    args = (
        _Spec(Path(inside[0]), {"eval": [inside[1]]}),  # a dataclass, a dict of lists
        functools.partial(_reader, inside[2]),  # a partial's argument
        [(3, Path(inside[3]))],  # a tuple in a list
        _Holder([Path(inside[4])]),  # an object's attributes (its frame is not walked)
        {inside[5]: 1},  # a dict's key
        closure,  # a closure's cell
        functools.partial(_reader, path=inside[7]),  # a keyword
        str(tmp_path / "elsewhere" / "x"),  # not under the build folder
        f"{root}-other/x",  # a folder whose name begins with the build folder's
        np.array([str(root / "in-an-array")]),  # arrays are data, not arguments
        b"bytes",
    )
    assert named_paths(args, str(root)) == set(inside)


def test_a_relay_sends_what_a_task_names_and_brings_back_what_it_wrote(tmp_path, s3):
    """The driver's folder and a node's copy are two folders here: the driver's ``needed`` sends
    each named file once per version, the node's ``bring`` writes it with the driver's mtime and
    skips it when its copy is current, ``send_back`` sends only what the task created or changed
    (a folder its value names, whole; a folder its arguments name, not), and ``fetch`` brings it
    into the driver's folder, whence a later task's node reads it from where it was sent. The
    relay's prefix is cleared."""
    uri, fs, prefix = s3
    driver, node = tmp_path / "driver", tmp_path / "node"
    (driver / "artifacts").mkdir(parents=True)
    shard = driver / "artifacts" / "part-0.parquet"
    shard.write_bytes(b"rows")
    out_folder = driver / ".tmp" / "step"
    out_folder.mkdir(parents=True)
    driver_relay = Relay(uri, driver, "driver-node", "cache/answers")
    args = (str(shard), str(out_folder))
    needed = driver_relay.needed(args)
    assert needed == Needed({"artifacts/part-0.parquet": versions([str(shard)])[str(shard)]}, (".tmp/step",))
    assert driver_relay.needed(args) == needed and driver_relay.moved.to_nodes.copied == 1  # sent once

    # the node's copy: the same relative paths under another folder (the relay maps by the spec's root)
    spec = relay.RelaySpec(uri, str(node), "driver-node")
    node_args = (str(node / "artifacts" / "part-0.parquet"), str(node / ".tmp" / "step"))
    bring(spec, needed)
    copy = node / "artifacts" / "part-0.parquet"
    assert copy.read_bytes() == b"rows" and copy.stat().st_mtime_ns == shard.stat().st_mtime_ns
    os.utime(copy, ns=(1, 1))  # another version: brought again
    bring(spec, needed)
    assert copy.stat().st_mtime_ns == shard.stat().st_mtime_ns

    named = named_paths(node_args, spec.root)
    before = versions(named)
    written = node / ".tmp" / "step" / "batch-1"
    written.mkdir()
    (written / "data.parquet").write_bytes(b"out")
    (node / ".tmp" / "step" / "another-tasks-file").write_bytes(b"not mine")  # in the argument folder
    log = node / "cache" / "answers" / "n-1.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text('{"key": "k"}\n')
    sent = send_back(spec, named, {"folder": written}, before, [log])
    assert sent == {".tmp/step/batch-1/data.parquet": 3, "cache/answers/n-1.jsonl": 13}
    assert send_back(spec, named, None, versions(named), [log]) == {}  # unchanged

    driver_relay.fetch(sent)
    assert (driver / ".tmp" / "step" / "batch-1" / "data.parquet").read_bytes() == b"out"
    assert (driver / "cache" / "answers" / "n-1.jsonl").read_text() == '{"key": "k"}\n'
    assert driver_relay.moved.back.copied == 2
    # a later task reading what a task wrote reads it where its node sent it: not sent up again
    again = driver_relay.needed((str(driver / ".tmp" / "step" / "batch-1" / "data.parquet"),))
    assert again.down == (".tmp/step/batch-1/data.parquet",) and driver_relay.moved.to_nodes.copied == 1
    other = tmp_path / "other-node"
    bring(relay.RelaySpec(uri, str(other), "driver-node"), again)
    assert (other / ".tmp" / "step" / "batch-1" / "data.parquet").read_bytes() == b"out"
    driver_relay.forget_logs()  # once stored in the request cache
    assert set(_stored(fs, f"{prefix}/{RELAY}")) == {
        "up/artifacts/part-0.parquet",
        "down/.tmp/step/batch-1/data.parquet",
    }
    driver_relay.clear()
    assert not _stored(fs, f"{prefix}/{RELAY}")


def test_a_killed_builds_answer_logs_left_in_the_store_are_brought_down_by_the_next(tmp_path, s3):
    """Logs a node sent that the driver of a killed build never brought down are brought into the
    build's answer-log folder by the next build's relay (whose start stores them in the request
    cache), and the rest of what the killed build left in the relay's prefix is deleted."""
    uri, fs, prefix = s3
    for rel, data in {"down/cache/answers/a.jsonl": b"one\n", "up/artifacts/x": b"stale", "down/y": b"old"}.items():
        with fs.open_output_stream(f"{prefix}/{RELAY}/{rel}") as f:
            f.write(data)
    root = tmp_path / "build"
    again = Relay(uri, root, "driver-node", "cache/answers")
    assert again.logs_kept == 1 and (root / "cache" / "answers" / "a.jsonl").read_bytes() == b"one\n"
    assert not _stored(fs, f"{prefix}/{RELAY}")


def test_a_store_the_relay_cannot_reach_stops_the_build_naming_the_uri_and_what_failed(tmp_path, s3):
    """(The ``s3`` fixture for its credentials; the URI points at a closed port.)"""
    uri = "s3://builds/x?endpoint_override=127.0.0.1:1&scheme=http&region=us-east-1"
    with pytest.raises(
        DataforgeError, match=r"^s3://builds/x\?.*: bringing down a killed build's answer logs .*NETWORK"
    ):
        Relay(uri, tmp_path / "build", "driver-node", "cache/answers")
