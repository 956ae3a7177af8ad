"""`--profile`: py-spy attached to each executor (and ceiling loop) the bench
starts, sampling into collapsed-stack files (`profile-*.txt`, loadable in
speedscope or flamegraph.pl), summarised as the functions with the most
samples, by self time and including callees.

py-spy samples from outside the process (`--nonblocking`: the target is
never paused) and skips idle threads, so percentages are of the samples in
which the process was busy on the CPU."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

RATE = 250  # samples per second
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None


class Profiler:
    """py-spy attached to one process, and how long it sampled."""

    def __init__(self, pid: int, output: Path):
        self.output = output
        self.began = time.monotonic()
        self.process = start(pid, output)

    def finish(self) -> dict[str, Any] | None:
        finish(self.process)
        seconds = time.monotonic() - self.began
        return summarize(self.output, seconds=seconds) if self.output.exists() else None


def start(pid: int, output: Path) -> subprocess.Popen | None:
    """Attach py-spy to `pid`; it stops by itself when the process exits."""
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    log = open(output.with_suffix(".log"), "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    time.sleep(0.2)  # let it attach before the workload starts
    return process


def finish(process: subprocess.Popen | None, timeout: float = 30) -> None:
    if process is None:
        return
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        process.wait(10)


def _function(frame: str) -> str:
    """`name (path/file.py:123)` -> `name (file.py)`: one entry per function."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = match.group("file").rsplit("/", 2)
    return f"{match.group('function')} ({'/'.join(file[-2:])})"


# A native thread is named by a function only it runs; every other sample is
# the hub's (the main thread, running whichever greenlet is current).
THREAD_MARKERS = {
    "JobLogs._write_loop": "job-log writer thread",
    "Heartbeat._thread_main": "heartbeat thread",
}
HUB = "hub (main) thread"


def summarize(path: Path, top: int = 15, seconds: float | None = None) -> dict[str, Any]:
    """Samples per thread, and the hub thread's top functions by self and
    inclusive samples (as % of all busy samples of the process)."""
    stacks: list[tuple[str, list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        parts = match.group("stack").split(";")
        thread = parts[0] if parts and parts[0].startswith("thread ") else "thread ?"
        frames = [
            _function(frame) for frame in parts if frame and not frame.startswith(("process ", "thread "))
        ]
        if frames:
            stacks.append((thread, frames, int(match.group("count"))))
    names: dict[str, str] = {}
    for thread, frames, _ in stacks:
        for marker, name in THREAD_MARKERS.items():
            if any(frame.startswith(marker + " ") for frame in frames):
                names[thread] = name
    total = sum(count for _, _, count in stacks)
    by_thread: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for thread, frames, count in stacks:
        name = names.get(thread, HUB)
        by_thread[name] += count
        if name == HUB:
            own[frames[-1]] += count
            for function in set(frames):
                inclusive[function] += count

    def share(counter: Counter[str]) -> list[list]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)] if total else []

    threads = {
        name: {
            "samples": n,
            "pct_of_samples": round(100 * n / total, 1) if total else 0,
            "cpu_share_of_wall": round(n / (RATE * seconds), 2) if seconds else None,
        }
        for name, n in by_thread.most_common()
    }
    return {
        "file": path.name,
        "samples": total,
        "rate_hz": RATE,
        "seconds": seconds,
        "threads": threads,
        "hub_self_pct": share(own),
        "hub_inclusive_pct": share(inclusive),
    }


def format_summary(name: str, summary: dict[str, Any], top: int = 12) -> str:
    lines = [f"{name}: {summary['samples']:,} busy samples at {summary['rate_hz']} Hz ({summary['file']})"]
    for thread, figures in summary["threads"].items():
        busy = figures["cpu_share_of_wall"]
        lines.append(
            f"  {figures['pct_of_samples']:5.1f}% of samples in the {thread}"
            + (f" (busy {busy:.0%} of the time sampled)" if busy is not None else "")
        )
    lines += [
        "  hub self %   function",
        *(f"  {pct:10.1f}   {fn}" for fn, pct in summary["hub_self_pct"][:top]),
        "  hub incl %   function",
        *(f"  {pct:10.1f}   {fn}" for fn, pct in summary["hub_inclusive_pct"][:top]),
    ]
    return "\n".join(lines)
