"""The process table from /proc (Linux), for the benches that measure a whole process tree (no heavy imports)."""

from __future__ import annotations

import os


def proc_stats() -> dict[int, list[str]]:
    """For every process: the fields of /proc/<pid>/stat after its command name ([1] is the parent pid,
    [11] and [12] user and system CPU ticks)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                out[int(entry)] = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
    return out
