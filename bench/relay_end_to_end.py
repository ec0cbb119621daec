#!/usr/bin/env python3
"""End-to-end relay: from the first SMTP connect to the last message received by smtp-sink.

For each target a fresh smtp-sink and a fresh relay (relayd through an ``smtp``
provider, or a local Postfix through its relayhost) are started; one swaks probe
goes through first so both ends are warm. Then the clock starts, smtp-source sends
``-m`` messages (10 sessions, 1 KiB) and the clock stops when smtp-sink has counted
the last of them (its ``-c`` counters, read as they are printed). Prints ingest and
end-to-end messages per second, duplicates seen by the sink, and relayd's final
statuses, then relayd / Postfix ratios.

    .venv/bin/python bench/relay_end_to_end.py                 # postfix and relayd, both modes
    .venv/bin/python bench/relay_end_to_end.py --target relayd --mode reuse --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import targets
from common import (
    BenchError,
    Sink,
    free_port,
    require_tools,
    run_source,
    source_command,
    swaks_probe,
)


@dataclass(frozen=True)
class Result:
    """One measured run."""

    target: str
    reuse: bool
    messages: int
    ingest_seconds: float
    total_seconds: float
    duplicates: int
    cpu: float | None = None  # CPU seconds of the server's processes, first connect to last at sink

    @property
    def ingest_rate(self) -> float:
        return self.messages / self.ingest_seconds

    @property
    def rate(self) -> float:
        return self.messages / self.total_seconds


def _wait_statuses(target: targets.Target, expected: int, timeout: float) -> dict[str, int]:
    """relayd's statuses once ``expected`` messages are ``sent`` (or when the timeout ends)."""
    if not isinstance(target, targets.RelaydTarget):
        return {}
    deadline = time.monotonic() + timeout
    statuses = target.statuses()
    while statuses.get("sent", 0) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
        statuses = target.statuses()
    return statuses


def measure(name: str, reuse: bool, args: argparse.Namespace) -> Result:
    """One timed run of ``name`` relaying ``args.messages`` messages to a fresh smtp-sink."""
    sink = Sink(free_port())
    try:
        target = targets.open_target(name, args, sink.port)
        try:
            swaks_probe(target.port)
            if sink.wait_for(1, 60) is None:
                raise BenchError(f"{target.label} did not relay the probe to smtp-sink in 60s")
            expected = 1 + args.messages
            mode = "reuse" if reuse else "new"
            cmd = source_command(target.port, args.messages, args.sessions, args.size, reuse)
            print(f"  {target.label}, {mode}: {cmd}", flush=True)
            target.begin_measurement(f"e2e-{mode}")
            with ThreadPoolExecutor(1) as pool:
                started = time.monotonic()
                source = pool.submit(
                    run_source,
                    target.port,
                    args.messages,
                    args.sessions,
                    args.size,
                    reuse,
                    args.timeout,
                )
                arrived = sink.wait_for(expected, args.timeout)
                target.end_measurement()
                run = source.result()
            if not run.ok:
                raise BenchError(f"{target.label}: smtp-source aborted: {run.output[-500:]}")
            if arrived is None:
                raise BenchError(
                    f"{target.label}: only {sink.count - 1} of {args.messages} messages reached "
                    f"smtp-sink within {args.timeout:.0f}s"
                )
            statuses = _wait_statuses(target, expected, 30)
            time.sleep(1)  # anything delivered twice would show up in the sink's count now
            duplicates = sink.count - expected
            if statuses:
                print(f"    relayd statuses: {statuses}")
            for line in target.notes():
                print("    " + line.replace("\n", "\n    "))
            return Result(
                target.label,
                reuse,
                args.messages,
                run.seconds,
                arrived - started,
                duplicates,
                target.cpu,
            )
        finally:
            target.close()
    finally:
        sink.stop()


def report(results: list[Result]) -> None:
    """Median per target and mode, and each target's ratio to Postfix."""
    print("\nsummary (median of runs):")
    medians: dict[tuple[str, bool], float] = {}
    for key in dict.fromkeys((r.target, r.reuse) for r in results):
        runs = [r for r in results if (r.target, r.reuse) == key]
        medians[key] = statistics.median(r.rate for r in runs)
        ingest = statistics.median(r.ingest_rate for r in runs)
        mode = "reuse" if key[1] else "new  "
        print(
            f"  {key[0]:<18} {mode}  end to end {medians[key]:6.0f} msgs/s"
            f"  (ingest {ingest:6.0f} msgs/s, duplicates {sum(r.duplicates for r in runs)})"
        )
    for (target, reuse), rate in medians.items():
        base = medians.get(("postfix", reuse))
        if target != "postfix" and base:
            mode = "connection reuse" if reuse else "new connection per message"
            print(f"  {target} / postfix, {mode}: {rate / base:.2f}x (target: 1.5x)")


def main() -> int:
    """Run every target in every mode and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    targets.add_arguments(parser)
    args = parser.parse_args()
    try:
        targets.check_arguments(args)
        if any(name not in ("relayd", "postfix") for name in args.target):
            raise BenchError("end to end needs a target this script starts: relayd or postfix")
        require_tools(["smtp-source", "smtp-sink", "swaks"])
        results: list[Result] = []
        for reuse in targets.modes(args):
            for _ in range(args.repeat):
                for name in args.target:
                    r = measure(name, reuse, args)
                    results.append(r)
                    print(
                        f"    {r.messages} messages: accepted in {r.ingest_seconds:.2f}s "
                        f"({r.ingest_rate:.0f} msgs/s), all at the sink after "
                        f"{r.total_seconds:.2f}s ({r.rate:.0f} msgs/s)"
                        + ("" if r.cpu is None else f", {r.cpu * 1e6 / r.messages:.0f} us CPU/msg"),
                        flush=True,
                    )
                    time.sleep(1)
        report(results)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
