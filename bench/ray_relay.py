"""Ray on a node that does not mount the build folder (``engine.relay``: the files of its tasks
pass through the object store) against the same node seeing the folder, in the same run.

The scale mix and recipe of ``bench/scale.py`` (source → normalize → filter → exact dedup →
MinHash dedup → group + cluster split → audit → format → export), built with ``--out s3://…``
twice on a Ray cluster of two nodes on this machine (``tests/two_nodes.py``: the head without
CPUs, so every task runs on the worker node, which has 2): once with the worker node seeing the
staging folder, once with the staging folder hidden from it (a mount namespace of its own, an
empty tmpfs over the folder), so that every file its tasks read or write crosses the store. The
store is moto's S3 server in this process, on loopback: its speed is moto's (Python), not a
cloud store's, so the figure that carries over is the files and bytes moved, not the seconds.

Reported per build: wall seconds (the build's process, publish included), the files and bytes
the relay moved each way, and what the publish sent.

Usage: .venv/bin/python bench/ray_relay.py --rows 200000 [--batch-rows 50000] [--words 100]
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import scale  # bench/scale.py (this script's folder is first on sys.path): the mix, the recipe

sys.path.insert(0, str(scale.REPO))
from tests.two_nodes import on_two_nodes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-rows", type=int, default=50_000)
    ap.add_argument("--words", type=int, default=100, help="words per response (about)")
    args = ap.parse_args()
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http", allow_bucket_creation=True).create_dir("bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            made = time.perf_counter()
            scale.make_mix(args.rows, args.words).write_parquet(folder / "mix.parquet")
            (folder / "recipe.yaml").write_text(scale.RECIPE)
            print(f"{args.rows:,} rows generated in {time.perf_counter() - made:.1f} s", flush=True)
            staging = folder / "staging"
            staging.mkdir()
            os.environ["DATAFORGE_STAGING"] = str(staging)
            for label, hidden in (("the worker node sees the staging folder", None), ("through the store", staging)):
                uri = f"s3://bench/{'relay' if hidden else 'shared'}?endpoint_override={host}:{port}&scheme=http"
                build = [str(folder / "recipe.yaml"), "--out", uri, "--executor", "ray", "--quiet"]
                build += ["--batch-rows", str(args.batch_rows)]
                (printed,) = on_two_nodes(folder, build, hidden=hidden, worker_node_only=True, timeout=7200)
                report(label, printed)
    finally:
        server.stop()


def report(label: str, printed: str) -> None:
    seconds = re.search(r"seconds ([\d.]+)", printed)
    relayed = re.search(r"files passed through the store, (.*)", printed)
    published = re.search(r"published to .*?: (\d[\d,]* file\(s\) sent \([^)]*\))", printed.replace("\n", " "))
    print(f"{label}: {seconds.group(1) if seconds else '?'} s", flush=True)
    print(f"  relay: {relayed.group(1) if relayed else 'nothing relayed'}")
    print(f"  publish: {published.group(1) if published else '?'}")


if __name__ == "__main__":
    main()
