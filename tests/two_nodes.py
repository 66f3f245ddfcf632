"""A real Ray cluster of two nodes on this machine, for tests and benchmarks: ``dataforge build``
run on it, one build after another, with the worker node optionally in a mount namespace of its
own that does not see a folder (a machine that does not mount the build folder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

# ``dataforge build``, with the module constants of ``$TEST_CONSTANTS`` ({"module.NAME": value})
# set first, printing the Ray runner's map rounds (step, function, jobs) as a line "maps: [...]"
BUILD = """
import importlib, json, os, sys
from dataforge.engine.ray_runner import RayRunner

for name, value in json.loads(os.environ.get("TEST_CONSTANTS", "{}")).items():
    module, attr = name.rsplit(".", 1)
    setattr(importlib.import_module(module), attr, value)
rounds, real_map = [], RayRunner._map

def recorded(self, name, fn, jobs):
    rounds.append((name, getattr(fn, "func", fn).__name__, len(jobs)))
    return real_map(self, name, fn, jobs)

RayRunner._map = recorded
from dataforge.cli import main
code = main(["build", *sys.argv[1:]])
print("maps:", json.dumps(rounds))
sys.exit(code)
"""

TWO_NODES = (
    f"""
BUILD = {BUILD!r}
"""
    + """
import os, subprocess, sys, time
import ray
from ray.cluster_utils import Cluster

hidden, node = os.environ.get("HIDDEN_FROM_WORKER_NODE"), None
alone = bool(os.environ.get("TASKS_ON_WORKER_NODE"))  # the head without CPUs, the worker node with 2
head = {"num_cpus": 0 if alone else 1, "include_dashboard": False}
cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
if alone:
    start = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--block", f"--address={cluster.address}",
             "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats"]
    log = open(os.path.join(os.path.dirname(sys.argv[0]), "worker-node.log"), "w")
    if hidden:  # in a mount namespace of its own, an empty tmpfs over the hidden folder
        mount = f'mount -t tmpfs tmpfs "{hidden}" && exec "$@"'
        own = ["--user", "--map-root-user"] if os.geteuid() else []
        start = ["unshare", *own, "--mount", "--propagation", "private", "sh", "-c", mount, "sh", *start]
    node = subprocess.Popen(start, stdout=log, stderr=log)
    ray.init(address=cluster.address)
    while len([n for n in ray.nodes() if n["Alive"]]) < 2:
        assert node.poll() is None, "the worker node did not start"
        time.sleep(0.5)
    ray.shutdown()
else:
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
try:
    for args in sys.argv[1:]:  # a build's arguments, each
        build = [sys.executable, "-c", BUILD, *args.split("\t")]
        began = time.perf_counter()
        done = subprocess.run(build, env={**os.environ, "RAY_ADDRESS": cluster.address}, capture_output=True, text=True)
        print(done.stdout, done.stderr, f"seconds {time.perf_counter() - began:.1f}", f"exit {done.returncode}")
finally:
    if node is not None:
        node.terminate()
        node.wait(60)
    cluster.shutdown()
"""
)


def on_two_nodes(
    folder: Path,
    *builds: list[str],
    hidden: Path | None = None,
    constants: dict[str, int] | None = None,
    worker_node_only: bool = False,
    timeout: float = 600,
) -> list[str]:
    """``dataforge build`` with each of ``builds``' arguments, one after the other, on a real Ray
    cluster of two nodes on this machine (``TWO_NODES``: a head and a worker raylet of 1 CPU
    each, in a process of its own, apart from the tests' local instance); what each printed.
    ``hidden``: a folder the worker node does not see (it runs in a mount namespace of its own,
    where an empty tmpfs covers the folder), as a machine that does not mount it; the head then
    has no CPU and the worker node 2, so every task runs on the worker node (so too with
    ``worker_node_only``, the folder seen). ``constants``: module constants each build sets first
    (``BUILD``). What each build printed ends in "seconds S" (its wall time). The script is
    written in ``folder``."""
    script = folder / "two_nodes.py"
    script.write_text(TWO_NODES)
    args = ["\t".join(b) for b in builds]
    env = {**os.environ, "TEST_CONSTANTS": json.dumps(constants or {})}
    if hidden:
        env["HIDDEN_FROM_WORKER_NODE"] = str(hidden)
    if worker_node_only or hidden:
        env["TASKS_ON_WORKER_NODE"] = "1"
    with subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    ) as cluster:
        try:
            out, err = cluster.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:  # the cluster's processes too, not only the script
            os.killpg(cluster.pid, signal.SIGKILL)
            out, err = cluster.communicate()
    printed = out.split(" exit ")
    assert out.count(" exit 0") == len(builds), out + err
    return printed[: len(builds)]
