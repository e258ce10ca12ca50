"""How much memory a data set of n samples needs, and how much this machine and process can still give.

A data set too large for the machine would end in a MemoryError traceback (a limit such as `ulimit -v`)
or in the kernel's OOM killer (no limit: the process is killed, nothing said). The config check that
`make repro` runs first compares the two, so the mistake is one line before DVC removes any output.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

# x and y, float32: what generate writes and every later stage loads.
DATA_BYTES_PER_SAMPLE = 8
# The pipeline's peak, twice the data set: measured (5 x 10^7 samples, make bench, 2026-12), train@numpy holds
# 1.6 times it (x, y and y_hat) and train@torch 1.7 (the data set, torch, and autograd's temporaries of one block
# of chunks; twice it before the chunks); generate and evaluate hold less.
PEAK_BYTES_PER_SAMPLE = 16


def available() -> tuple[int, str] | None:
    """The fewest bytes this process can still get, and where that bound comes from; None if nothing says.

    The machine's MemAvailable (what can be had without swapping), the container's cgroup limit, and the
    process's own limits on its address space and data (`ulimit -v`, `ulimit -d`), less what it uses.
    """
    bounds = []
    meminfo = _fields(Path("/proc/meminfo"))
    if "MemAvailable" in meminfo:
        bounds.append((meminfo["MemAvailable"], "available on this machine (MemAvailable)"))
    elif hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        bounds.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free on this machine"))
    cgroup = _cgroup_room()
    if cgroup is not None:
        bounds.append((cgroup, "left under this container's memory limit (cgroup memory.max)"))
    status = _fields(Path("/proc/self/status"))
    limits = ((resource.RLIMIT_AS, "VmSize", "ulimit -v"), (resource.RLIMIT_DATA, "VmData", "ulimit -d"))
    for limit, used, name in limits:
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY:
            bounds.append((max(soft - status.get(used, 0), 0), f"left under this process's limit ({name})"))
    return min(bounds) if bounds else None


def gigabytes(size: float) -> str:
    """A size in bytes as people say it: '3.2 GB', '512 MB'."""
    return f"{size / 1e9:.3g} GB" if size >= 1e9 else f"{size / 1e6:.3g} MB"


def _fields(path: Path) -> dict[str, int]:
    """The `Name: <n> kB` lines of a /proc file, in bytes; empty where there is no /proc."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        number, _, unit = value.strip().partition(" ")
        if number.isdigit():
            fields[name] = int(number) * (1024 if unit == "kB" else 1)
    return fields


def _cgroup_room() -> int | None:
    """Bytes left under the cgroup (v2) memory limit of this process; None without a limit."""
    try:
        relative = next(
            line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")
        )
        folder = Path("/sys/fs/cgroup", relative.lstrip("/"))
        limit = (folder / "memory.max").read_text().strip()
        current = int((folder / "memory.current").read_text())
    except (OSError, StopIteration, ValueError):
        return None
    return None if limit == "max" else max(int(limit) - current, 0)


def too_large(n_samples: int) -> str | None:
    """Why a data set of `n_samples` cannot fit in the memory left, with what to change; None when it fits."""
    room = available()
    needed = PEAK_BYTES_PER_SAMPLE * n_samples
    if room is None or needed <= room[0]:
        return None
    return describe(n_samples, room)


def describe(n_samples: int, room: tuple[int, str] | None = None) -> str:
    """One line: the size asked, what it needs, what is left (if known) and what to change."""
    room = room or available()
    left = f", and {gigabytes(room[0])} is {room[1]}" if room else ""
    # What is left holds this many samples at the peak, less the stage's own libraries (torch's are large).
    fits = f" well below {room[0] // PEAK_BYTES_PER_SAMPLE:,}" if room and room[0] >= PEAK_BYTES_PER_SAMPLE else ""
    return (
        f"data.n_samples = {n_samples:,} needs about {gigabytes(PEAK_BYTES_PER_SAMPLE * n_samples)} of memory "
        f"({DATA_BYTES_PER_SAMPLE} bytes a sample for x and y, {PEAK_BYTES_PER_SAMPLE} at the pipeline's peak, "
        f"training torch){left}: lower data.n_samples{fits}, or run where more memory is free"
    )
