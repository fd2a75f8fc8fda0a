"""Measure one command: wall seconds, peak resident memory, a memory timeline and the CPU others used.

Why a separate, standard-library-only program: Linux carries a process's peak RSS into the programs
it starts (``ru_maxrss`` survives ``fork`` and ``execve``), so a command started by a big benchmark
process would report the benchmark's peak, not its own. Started fresh, this wrapper is a few MB, its
child starts from that, and ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is then the command's own peak
(the largest of it and anything it started and waited for).

Run:
    python bench/measure_command.py RESULT.json LOG.txt -- COMMAND [ARGS ...]

Writes ``RESULT.json``: returncode, seconds, peak_rss_mb, peak_rss_at_seconds, cpu_seconds,
others_cpu_share, load_average [start, end], rss_timeline [[seconds, MB], ...] and output_lines
[[seconds, line], ...] (when each line of output appeared); the command's stdout and stderr go to
``LOG.txt``. Linux only (``/proc``); elsewhere the timeline and CPU share are
empty.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RSS_POLL_SECONDS = 0.25  # how often the child's resident memory is sampled for the timeline
TIMELINE_POINTS = 200  # at most this many samples are kept (the peak always)
MAX_LINES, LINE_CHARS = 2000, 120  # output lines noted with their time, and how much of each


def measure_command(cmd: list[str], log_path: Path, cwd: Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` (output to ``log_path``) and measure it; see the module docstring for the fields."""
    start_cpu, start_load = cpu_snapshot(), os.getloadavg()[0]
    timeline: list[tuple[float, float]] = []
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        child = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        reader = threading.Thread(target=copy_lines, args=(child.stdout, log, lines, start), daemon=True)
        reader.start()
        while child.poll() is None:
            rss = current_rss_mb(child.pid)
            if rss is not None:
                timeline.append((round(time.perf_counter() - start, 2), round(rss, 1)))
            time.sleep(RSS_POLL_SECONDS)
        reader.join()
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    kib = usage.ru_maxrss if sys.platform != "darwin" else usage.ru_maxrss / 1024  # macOS reports bytes
    return {
        "returncode": child.returncode, "seconds": round(seconds, 3), "peak_rss_mb": round(kib / 1024, 1),
        "peak_rss_at_seconds": max(timeline, key=lambda t: t[1])[0] if timeline else None,
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "others_cpu_share": others_cpu_share(start_cpu, cpu_snapshot()),
        "load_average": [round(start_load, 2), round(os.getloadavg()[0], 2)],
        "rss_timeline": thin(timeline, TIMELINE_POINTS),
        "output_lines": lines[:MAX_LINES],
    }


def copy_lines(stream: Any, log: Any, lines: list[tuple[float, str]], start: float) -> None:
    """Copy the command's output to ``log`` as it comes, noting when each line appeared (progress-bar
    redraws, which end in a carriage return, are copied but not noted), so memory can be matched to what
    the command was doing."""
    pending = b""
    for chunk in iter(lambda: stream.read1(65536), b""):
        log.write(chunk)
        pending += chunk
        *done, pending = pending.split(b"\n")
        for raw in done:
            text = raw.split(b"\r")[-1].decode("utf-8", errors="replace").rstrip()
            if text:
                lines.append((round(time.perf_counter() - start, 2), text[:LINE_CHARS]))
    log.flush()


def current_rss_mb(pid: int) -> float | None:
    """The resident memory of process ``pid`` now (VmRSS), in MB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def thin(points: list[tuple[float, float]], at_most: int) -> list[tuple[float, float]]:
    """At most ``at_most`` points of a timeline, always keeping its peak."""
    if len(points) <= at_most:
        return points
    step = len(points) / at_most
    kept = {int(i * step) for i in range(at_most)} | {max(range(len(points)), key=lambda i: points[i][1])}
    return [points[i] for i in sorted(kept)]


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall seconds, CPU-seconds busy machine-wide, CPU-seconds of this process and its children)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = os.times()
    return time.time(), busy, own.user + own.system + own.children_user + own.children_system


def others_cpu_share(start: tuple[float, float, float] | None, end: tuple[float, float, float] | None) -> float | None:
    """Share of the machine's cores that other processes used between two snapshots (0: we were alone)."""
    if start is None or end is None or end[0] <= start[0]:
        return None
    others = (end[1] - start[1]) - (end[2] - start[2])
    return round(max(0.0, others) / ((end[0] - start[0]) * (os.cpu_count() or 1)), 3)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: python bench/measure_command.py RESULT.json LOG.txt -- COMMAND [ARGS ...]")
    result = measure_command(argv[3:], Path(argv[1]), cwd=Path.cwd())
    Path(argv[0]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
