#!/usr/bin/env python3
"""Sample a running relayd with py-spy while a benchmark drives it, and summarise where time goes.

py-spy is not a dependency of the project; install it into the venv only to profile:
``.venv/bin/pip install py-spy``. Standalone use on folded output py-spy already wrote:

    python3 bench/profiler.py relayd.folded [--top 25]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BenchError

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy_executable() -> str:
    """py-spy from this venv or PATH; a clear error with the install line otherwise."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    from shutil import which

    found = which("py-spy")
    if found is None:
        raise BenchError(f"py-spy is not installed: {sys.executable} -m pip install py-spy")
    return found


class PySpy:
    """``py-spy record --pid`` in the background, writing folded stacks to ``output``."""

    def __init__(self, pid: int, output: Path, rate: int = 200, gil: bool = False) -> None:
        self.output = output
        cmd = [py_spy_executable(), "record", "--pid", str(pid), "--rate", str(rate)]
        # relayd serves SMTP from worker processes (smtp.workers): sample them too.
        cmd += ["--subprocesses", "--format", "raw", "--output", str(output)]
        if gil:
            cmd.append("--gil")
        self._log = output.with_suffix(".log").open("wb")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def stop(self) -> Path:
        """Stop sampling (SIGINT makes py-spy write its output) and return the output path."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._log.close()
        if not self.output.exists():
            log = self.output.with_suffix(".log").read_text(errors="replace")
            raise BenchError(f"py-spy wrote no profile: {log.strip()[-300:]}")
        return self.output


@dataclass(frozen=True)
class Profile:
    """Folded stacks aggregated per function: samples on top of the stack and anywhere in it."""

    total: int
    own: Counter[str]
    inclusive: Counter[str]

    @classmethod
    def read(cls, path: Path) -> Profile:
        """Parse py-spy's raw (folded) format: ``frame;frame;... count`` per line."""
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_short(frame) for frame in stack.split(";")]
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        return cls(total, own, inclusive)

    def report(self, top: int = 25) -> str:
        """Two tables: self time and inclusive time, as a share of all samples."""
        if self.total == 0:
            return "no samples"
        lines = [f"{self.total} samples", "", "self time (top of stack):"]
        lines += [f"  {n / self.total:6.1%}  {f}" for f, n in self.own.most_common(top)]
        lines += ["", "inclusive time (anywhere in the stack):"]
        lines += [f"  {n / self.total:6.1%}  {f}" for f, n in self.inclusive.most_common(top)]
        return "\n".join(lines)


def _short(frame: str) -> str:
    """``func (path/to/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3.":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{match.group('func')} ({path})"


def main() -> int:
    """Summarise a folded profile file."""
    parser = argparse.ArgumentParser(description="Summarise py-spy folded stacks.")
    parser.add_argument("folded", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with contextlib.suppress(BrokenPipeError):
        try:
            print(Profile.read(args.folded).report(args.top))
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
