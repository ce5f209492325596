"""Hosts of a test's own on this machine: network namespaces on one bridge (`ip netns`, root only).

Host i is namespace `<prefix>i` at `<subnet>.(i+1)`, joined by a veth pair to
a bridge; each end of each link is a 10 Gbit/s token bucket (`tc qdisc tbf`).
The bridge has `<subnet>.254` (`gateway`): the hosts reach the services a test
starts on this machine's own namespace (an S3 server listening on 0.0.0.0) there.
The kernel these run on has no netem qdisc, so no delay is added: the links
are veth, with their own addresses, routes and TCP stacks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path


def gateway(subnet: str = "10.213.0") -> str:
    """This machine's address on the hosts' network."""
    return f"{subnet}.254"


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not (shutil.which("ip") and shutil.which("tc")):
        return "no `ip`/`tc` (iproute2)"
    return None


@contextlib.contextmanager
def hosts(count: int, prefix: str = "tfbhost", subnet: str = "10.213.0"):
    """`count` namespaces on one bridge; yields their names and addresses; removes them on exit."""
    bridge = f"{prefix}-br"

    def run(*args, ns=None):
        command = (["ip", "netns", "exec", ns] if ns else []) + list(args)
        for attempt in range(3):  # a namespace just deleted frees its links asynchronously
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode == 0:
                return
            time.sleep(1 + attempt)
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip()}")

    remove(prefix)
    try:
        run("ip", "link", "add", bridge, "type", "bridge")
        run("ip", "addr", "add", f"{gateway(subnet)}/24", "dev", bridge)
        run("ip", "link", "set", bridge, "up")
        for i in range(count):
            ns, outside, inside = f"{prefix}{i}", f"{prefix}-v{i}", f"{prefix}-p{i}"
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            run("ip", "link", "set", inside, "netns", ns)
            run("ip", "link", "set", outside, "master", bridge)
            run("ip", "link", "set", outside, "up")
            run("ip", "addr", "add", f"{subnet}.{i + 1}/24", "dev", inside, ns=ns)
            run("ip", "link", "set", inside, "up", ns=ns)
            run("ip", "link", "set", "lo", "up", ns=ns)
            for dev, where in ((outside, None), (inside, ns)):
                run("tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", "10gbit", "burst", "1mb", "latency", "1ms",
                    ns=where)
        yield [(f"{prefix}{i}", f"{subnet}.{i + 1}") for i in range(count)]
    finally:
        remove(prefix)


def remove(prefix: str) -> None:
    """Every namespace named `<prefix>N` and the bridge (a run killed before its cleanup leaves them)."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    for name in listed:
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", f"{prefix}-br"], capture_output=True)


def start_workers(config_path, hosts: list[tuple[str, str]], env: dict[str, str], pin: bool = False,
                  port: int = 23000, hidden: tuple[Path, ...] = ()) -> list[subprocess.Popen]:
    """`python -m tf_train --config C` in each host's namespace, TF_CONFIG naming every host's address (worker i
    at `<address i>:port`); with `pin`, worker i on core i mod the cores this process may use.

    `hidden`: directories this machine's hosts do not share. Each worker runs in a mount namespace of its own with
    an empty tmpfs over each (its own disk: its TMPDIR is in the first, and its config is delivered there, as a
    cluster manager mounts a job's config), so what it reads or writes elsewhere goes through the network."""
    cluster = {"worker": [f"{address}:{port}" for _, address in hosts]}
    cores = sorted(os.sched_getaffinity(0))
    procs = []
    for index, (ns, _) in enumerate(hosts):
        task = {**env, "PYTHONUNBUFFERED": "1",
                "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        command = [sys.executable, "-m", "tf_train", "--config", str(config_path)]
        if hidden:
            for directory in hidden:
                Path(directory).mkdir(parents=True, exist_ok=True)
            task.update(TMPDIR=str(Path(hidden[0]) / "tmp"), TFBRIDGE_HOST_CONFIG=Path(config_path).read_text())
            mounts = " && ".join(f"mount -t tmpfs tfbridge-host {shlex.quote(str(d))}" for d in hidden)
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f'{mounts} && mkdir -p "$TMPDIR" && printf %s "$TFBRIDGE_HOST_CONFIG" > "$TMPDIR/config.yaml" '
                       f'&& exec "$@" --config "$TMPDIR/config.yaml"', "sh", *command[:-2]]
        core = {cores[index % len(cores)]}
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns, *command], env=task, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, cwd="/" if hidden else None,
                                      preexec_fn=(lambda core=core: os.sched_setaffinity(0, core)) if pin
                                      else None))
    return procs
