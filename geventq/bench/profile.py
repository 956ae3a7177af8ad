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


def start(pid: int, output: Path) -> subprocess.Popen | None:
    """Attach py-spy to `pid`; it stops by itself when the process exits."""
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    log = open(output.with_suffix(".log"), "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", str(RATE), "--nonblocking",
                                "--format", "raw", "--output", str(output)],
                               stdout=log, stderr=subprocess.STDOUT)
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


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """The top functions by self samples and by inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        count = int(match.group("count"))
        frames = [_function(frame) for frame in match.group("stack").split(";")]
        # With --threads or --subprocesses py-spy puts the thread or process first.
        frames = [frame for frame in frames if frame and not frame.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for function in set(frames):
            inclusive[function] += count
    def share(counter: Counter[str]) -> list[list]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)] if total else []
    return {"file": path.name, "samples": total, "rate_hz": RATE, "self_pct": share(own),
            "inclusive_pct": share(inclusive)}


def format_summary(name: str, summary: dict[str, Any], top: int = 12) -> str:
    lines = [f"{name}: {summary['samples']:,} busy samples at {summary['rate_hz']} Hz ({summary['file']})",
             "  self %   function", *(f"  {pct:6.1f}   {fn}" for fn, pct in summary["self_pct"][:top]),
             "  incl %   function", *(f"  {pct:6.1f}   {fn}" for fn, pct in summary["inclusive_pct"][:top])]
    return "\n".join(lines)
