"""``relayctl top``: a live full-screen view of the realtime stream (q quits).

The screen shows the SSE stream of ``GET /api/stats/realtime`` (rate, queue depth,
active processors, with a short history) and, refreshed every ``--interval``,
per-provider health and queue counts from ``GET /api/stats``. Without a terminal,
or with ``--json``, it prints one line per event instead.

The stream lasts as long as relayd runs: when it ends (relayd stopped, or the connection
dropped) before ``--iterations`` events, ``top`` exits 5 like any command that loses relayd.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import sys
import termios
import threading
import time
import tty
from collections import deque
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from relayctl.client import Client
from relayctl.commands.stats import provider_rows
from relayctl.context import current
from relayctl.errors import RelayError, UnreachableError
from relayctl.output import STATUS_STYLES

BARS = " ▁▂▃▄▅▆▇█"
HISTORY = 60


@contextlib.contextmanager
def keys_pressed() -> Iterator[queue.Queue[str]]:
    """Keys typed on the terminal, one at a time, without waiting for Enter."""
    keys: queue.Queue[str] = queue.Queue()
    if not sys.stdin.isatty():
        yield keys
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                keys.put(os.read(fd, 1).decode(errors="replace"))

    tty.setcbreak(fd)
    reader = threading.Thread(target=read, name="top-keys", daemon=True)
    reader.start()
    try:
        yield keys
    finally:
        stop.set()
        reader.join(1)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def sparkline(values: deque[float]) -> str:
    """Recent values as block characters, scaled to the largest."""
    peak = max(values, default=0) or 1
    return "".join(BARS[min(len(BARS) - 1, round(v / peak * (len(BARS) - 1)))] for v in values)


def screen(
    url: str, metrics: dict[str, Any], history: deque[float], stats: dict[str, Any]
) -> Group:
    """The whole screen for the latest event and stats."""
    now = datetime.now().astimezone()
    header = Text(f"relayctl top — {url} — {now:%H:%M:%S} — press q to quit", style="bold")
    live = Table(box=box.SIMPLE_HEAD, title="Realtime", title_justify="left")
    for name in ("EMAILS/S", "QUEUE DEPTH", "ACTIVE", "AT"):
        live.add_column(name)
    live.add_row(
        str(metrics.get("emails_per_second", "-")),
        str(metrics.get("queue_depth", "-")),
        str(metrics.get("active_processors", "-")),
        str(metrics.get("timestamp", "waiting for the first event...")),
    )
    providers = Table(box=box.SIMPLE_HEAD, title="Providers", title_justify="left")
    for name in ("PROVIDER", "STATUS", "SUCCESS", "LATENCY_MS"):
        providers.add_column(name)
    for row in provider_rows(stats.get("providers") or {}):
        status = str(row[1])
        providers.add_row(
            str(row[0]), Text(status, style=_health(status)), str(row[2]), _text(row[3])
        )
    counts = Table(box=box.SIMPLE_HEAD, title="Queue", title_justify="left")
    counts.add_column("STATUS")
    counts.add_column("MESSAGES")
    for status, n in (stats.get("queue") or {}).items():
        counts.add_row(Text(status, style=STATUS_STYLES.get(status, "")), str(n))
    rate_line = Text(f"rate  {sparkline(history)}", style="green")
    return Group(header, live, rate_line, providers, counts)


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


def _health(status: str) -> str:
    return {"healthy": "green", "degraded": "yellow", "down": "red", "unhealthy": "red"}.get(
        status, ""
    )


def stream_ended(client: Client) -> UnreachableError:
    """The error for a stream relayd ended: it stopped (or a proxy cut the connection)."""
    return UnreachableError(client.base_url, "the event stream ended (relayd stopped?)")


def _stream(client: Client, events: queue.Queue[Any]) -> None:
    try:
        for _, data in client.events():
            events.put(data)
    except Exception as exc:
        events.put(exc)
    events.put(None)


def top(
    ctx: typer.Context,
    interval: Annotated[
        float, typer.Option("--interval", min=0.5, help="Seconds between provider refreshes.")
    ] = 5.0,
    iterations: Annotated[
        int, typer.Option("--iterations", min=0, help="Stop after N events (0: until q).")
    ] = 0,
    json_flag: Annotated[bool, typer.Option("--json", help="One JSON event per line.")] = False,
) -> None:
    """Watch the daemon live: rate, queue depth and provider health (q quits).

    Piped or with --json it prints one line per event: {"timestamp", "emails_per_second",
    "queue_depth", "active_processors"}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("top") as client:
        if out.json_mode or not out.rich:
            for seen, (_, data) in enumerate(client.events(), start=1):
                if out.json_mode:
                    out.console.file.write(json.dumps(data, separators=(",", ":")) + "\n")
                else:
                    out.line(
                        f"{data.get('timestamp')} rate={data.get('emails_per_second')} "
                        f"depth={data.get('queue_depth')} active={data.get('active_processors')}"
                    )
                out.console.file.flush()
                if iterations and seen >= iterations:
                    return
            raise stream_ended(client)
        run_screen(client, out.console, interval, iterations)


def run_screen(client: Client, console: Any, interval: float, iterations: int) -> None:
    """The full-screen loop: events from a reader thread, keys from the terminal."""
    events: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=_stream, args=(client, events), name="top-sse", daemon=True).start()
    metrics: dict[str, Any] = {}
    history: deque[float] = deque(maxlen=HISTORY)
    stats = client.stats()
    refreshed = time.monotonic()
    seen = 0
    with (
        keys_pressed() as keys,
        Live(
            screen(client.display_url, metrics, history, stats),
            console=console,
            screen=True,
            auto_refresh=False,
        ) as live,
    ):
        try:
            while True:
                if any(keys.get_nowait().lower() == "q" for _ in range(keys.qsize())):
                    return
                try:
                    item = events.get(timeout=0.1)
                except queue.Empty:
                    item = {}
                if item is None:
                    raise stream_ended(client)
                if isinstance(item, RelayError):
                    raise item
                if isinstance(item, Exception):
                    raise RelayError("STREAM_ERROR", str(item)) from item
                if item:
                    metrics = item
                    rate = metrics.get("emails_per_second")
                    history.append(float(rate) if isinstance(rate, int | float) else 0.0)
                    seen += 1
                if time.monotonic() - refreshed >= interval:
                    stats, refreshed = client.stats(), time.monotonic()
                live.update(screen(client.display_url, metrics, history, stats), refresh=True)
                if iterations and seen >= iterations:
                    return
        except KeyboardInterrupt:
            return
