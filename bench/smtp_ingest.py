#!/usr/bin/env python3
"""Durable SMTP ingest: accepted messages per second under Postfix's smtp-source.

Drives each target with ``smtp-source -s 10 -l 1024 -m 10000``, once with a new
connection per message and once reusing connections (``-d``), and prints accepted
messages per second. smtp-source runs without ``-A``, so any reply other than 2xx
aborts the run: a finished run means every message got its 250. For relayd the
database is then counted: every message that got a 250 must be stored.

While ingesting, every target relays to one smtp-sink as it would in production
(relayd through an ``smtp`` provider, Postfix through its relayhost), so both pay
for delivery too. ``--deliver outbox`` keeps relayd's default outbox instead.

    .venv/bin/python bench/smtp_ingest.py                      # postfix and relayd, both modes
    .venv/bin/python bench/smtp_ingest.py --target relayd --mode reuse --loop asyncio
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
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
    seconds: float
    lost: int | None
    cpu: float | None = None  # CPU seconds the server's processes used during the run

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_per_message(self) -> str:
        """CPU microseconds per message: a figure a busy machine disturbs less than the rate."""
        return "" if self.cpu is None else f", {self.cpu * 1e6 / self.messages:.0f} us CPU/msg"


def measure(name: str, reuse: bool, args: argparse.Namespace) -> Result:
    """Start a fresh target (and sink), probe it, time one smtp-source run, verify storage."""
    relay_to_sink = name != "relayd" or args.deliver == "sink"
    sink = Sink(free_port()) if relay_to_sink and name in ("relayd", "postfix") else None
    try:
        target = targets.open_target(name, args, sink.port if sink else None)
        try:
            swaks_probe(target.port)
            before = target.stored()
            mode = "reuse" if reuse else "new"
            cmd = source_command(target.port, args.messages, args.sessions, args.size, reuse)
            print(f"  {target.label}, {mode}: {cmd}", flush=True)
            target.begin_measurement(f"ingest-{mode}")
            run = run_source(
                target.port, args.messages, args.sessions, args.size, reuse, args.timeout
            )
            target.end_measurement()
            if not run.ok:
                raise BenchError(f"{target.label}: smtp-source aborted: {run.output[-500:]}")
            after = target.stored()
            lost = None
            if before is not None and after is not None:
                lost = before + args.messages - after
            for line in target.notes():
                print("    " + line.replace("\n", "\n    "))
            return Result(target.label, reuse, args.messages, run.seconds, lost, target.cpu)
        finally:
            target.close()
    finally:
        if sink is not None:
            sink.stop()


def report(results: list[Result]) -> None:
    """Median per target and mode, and each target's ratio to Postfix."""
    print("\nsummary (median of runs):")
    medians: dict[tuple[str, bool], float] = {}
    for key in dict.fromkeys((r.target, r.reuse) for r in results):
        rates = [r.rate for r in results if (r.target, r.reuse) == key]
        medians[key] = statistics.median(rates)
        lost = [r.lost for r in results if (r.target, r.reuse) == key and r.lost is not None]
        check = f"  lost {sum(lost)}" if lost else ""
        mode = "reuse" if key[1] else "new  "
        print(f"  {key[0]:<18} {mode}  {medians[key]:8.0f} msgs/s{check}")
    for (target, reuse), rate in medians.items():
        base = medians.get(("postfix", reuse))
        if target != "postfix" and base:
            mode = "connection reuse" if reuse else "new connection per message"
            print(f"  {target} / postfix, {mode}: {rate / base:.2f}x (target: 2x)")


def main() -> int:
    """Run every target in every mode and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    targets.add_arguments(parser)
    parser.add_argument(
        "--deliver",
        choices=("sink", "outbox"),
        default="sink",
        help="relayd delivers to smtp-sink (like Postfix) or to its outbox directory",
    )
    args = parser.parse_args()
    try:
        targets.check_arguments(args)
        require_tools(["smtp-source", "smtp-sink", "swaks"])
        results: list[Result] = []
        for reuse in targets.modes(args):
            for _ in range(args.repeat):
                for name in args.target:
                    result = measure(name, reuse, args)
                    results.append(result)
                    lost = "" if result.lost is None else f", stored all but {result.lost}"
                    print(
                        f"    {result.messages} messages in {result.seconds:.2f}s: "
                        f"{result.rate:.0f} msgs/s{lost}{result.cpu_per_message}",
                        flush=True,
                    )
                    time.sleep(1)
        report(results)
        if any(r.lost for r in results):
            print("MESSAGES LOST: a 250 was sent for a message that is not stored")
            return 1
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
