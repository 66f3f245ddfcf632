"""Fixtures of the engine's tests that talk to an object store: moto's S3 server on loopback,
spoken to by pyarrow's S3 filesystem over HTTP (``tests/engine/test_remote.py``, and the Ray
executor's nodes that do not mount the build folder in ``tests/engine/test_ray.py``)."""

from __future__ import annotations

import hashlib
import logging

import pytest


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on a free loopback port, with one bucket; yields (endpoint, filesystem)."""
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request in a failure's log
    mp = pytest.MonkeyPatch()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        mp.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True)
    fs.create_dir("builds")
    yield endpoint, fs
    server.stop()
    mp.undo()


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch, request):
    """A fresh prefix in the bucket (its URI) and the store's filesystem; staging folders go under
    ``tmp_path/staging`` (``$DATAFORGE_STAGING``)."""
    endpoint, fs = s3_server
    monkeypatch.setenv("DATAFORGE_STAGING", str(tmp_path / "staging"))
    prefix = f"builds/{request.node.name[:40]}-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:8]}"
    return f"s3://{prefix}?endpoint_override={endpoint}&scheme=http&region=us-east-1", fs, prefix


def _stored(fs, prefix: str) -> dict[str, bytes]:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    out = {}
    for info in infos:
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(prefix) + 1 :]] = f.read()
    return out
