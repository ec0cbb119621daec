"""``relayctl stats``: a summary of the queue, processing, providers and today's quota."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from relayctl.context import current
from relayctl.output import Output

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]


def rate(value: Any) -> str:
    """A 0..1 ratio as a percentage ("-" when unknown)."""
    return f"{value:.1%}" if isinstance(value, int | float) else "-"


def provider_rows(providers: dict[str, Any]) -> list[tuple[Any, ...]]:
    """One row per provider: id, status, success rate, latency."""
    return [
        (pid, p.get("status"), rate(p.get("success_rate")), p.get("avg_latency_ms"))
        for pid, p in sorted(providers.items())
    ]


def render_stats(out: Output, data: dict[str, Any]) -> None:
    """The sections of GET /api/stats as tables."""
    system = data.get("system") or {}
    out.fields(
        [
            ("version", system.get("version")),
            ("uptime_seconds", system.get("uptime_seconds")),
            ("current_time", system.get("current_time")),
        ]
    )
    queue = data.get("queue") or {}
    out.blank()
    out.table(("STATUS", "MESSAGES"), list(queue.items()), title="Queue")
    processing = data.get("processing") or {}
    if processing:
        out.blank()
        out.table(
            ("METRIC", "VALUE"), list(processing.items()), title="Processing", status_column=None
        )
    providers = data.get("providers") or {}
    if providers:
        out.blank()
        out.table(
            ("PROVIDER", "STATUS", "SUCCESS", "LATENCY_MS"),
            provider_rows(providers),
            title="Providers",
        )
    limits = (data.get("rate_limits") or {}).get("global") or {}
    if limits:
        out.blank()
        out.fields(
            [
                ("used_today", limits.get("used_today")),
                ("limit_today", limits.get("limit_today")),
                ("reset_at", limits.get("reset_at")),
            ],
            title="Global quota",
        )


def stats(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Summarize the daemon: queue by status, processing times, providers, quota.

    With --json: GET /api/stats's data {"system", "queue", "processing", "providers",
    "rate_limits"}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("stats") as client:
        data = client.stats()
    if out.json_mode:
        out.json(data)
    else:
        render_stats(out, data)
