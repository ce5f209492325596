"""The processes of this machine as the benchmarks measure them: resident memory and CPU time, by process tree."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[int, int, float]]:
    """pid -> (parent pid, resident KiB, CPU seconds used) of every process now."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            status = (stat.parent / "status").read_text()
        except OSError:
            continue
        rss = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")), 0)
        found[int(stat.parent.name)] = (int(fields[1]), rss, (int(fields[11]) + int(fields[12])) / _TICKS)
    return found


def tree(root: int, now: dict[int, tuple[int, int, float]]) -> set[int]:
    """The pids of `root` and all its descendants in `now` (from `processes()`)."""
    found, frontier = {root}, [root]
    while frontier:
        frontier = [pid for pid, (parent, _, _) in now.items() if parent in frontier and pid not in found]
        found.update(frontier)
    return found & now.keys()
