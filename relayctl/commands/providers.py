"""``relayctl providers``: list providers, force health checks, validate credentials."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from relayctl.context import ExitCode, current, exit_with

app = typer.Typer(
    name="providers", help="Delivery providers and their health.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]
NOT_FOUND_HINT = "list provider ids with: relayctl providers ls"


class Kind(StrEnum):
    """Providers whose credentials the API can validate."""

    gmail = "gmail"
    mailgun = "mailgun"


@app.command("ls")
def list_providers(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """List providers with status, routing and metrics.

    With --json: {"providers": [{"id", "type", "workspace_id", "status", "enabled",
    "priority", "weight", "config", "metrics", "last_health_check"}]}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("list providers") as client:
        data = client.list_providers()
    if out.json_mode:
        out.json(data)
        return
    rows = []
    for p in data.get("providers", []):
        metrics = p.get("metrics") or {}
        success = metrics.get("success_rate")
        rows.append(
            (
                p.get("id"),
                p.get("type"),
                p.get("status"),
                "yes" if p.get("enabled") else "no",
                p.get("priority"),
                p.get("weight"),
                p.get("workspace_id"),
                metrics.get("total_sent"),
                f"{success:.1%}" if isinstance(success, int | float) else None,
                p.get("last_health_check"),
            )
        )
    out.table(
        (
            "ID",
            "TYPE",
            "STATUS",
            "ENABLED",
            "PRIO",
            "WEIGHT",
            "WORKSPACE",
            "SENT",
            "SUCCESS",
            "CHECKED",
        ),
        rows,
    )


@app.command("check")
def check_providers(
    ctx: typer.Context,
    provider_id: Annotated[
        str | None, typer.Argument(help="Provider id (default: every provider).")
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Force a health check now.

    With --json: a list of {"provider_id", "status", "latency_ms", "checked_at"}.
    Exit 1 when a checked provider is not healthy.
    """
    state = current(ctx)
    out = state.output(json_flag)
    results: list[dict[str, Any]] = []
    with state.session(f"check {provider_id or 'providers'}", NOT_FOUND_HINT) as client:
        ids = (
            [provider_id]
            if provider_id
            else [str(p.get("id")) for p in client.list_providers().get("providers", [])]
        )
        for pid in ids:
            results.append(client.check_provider(pid))
    if out.json_mode:
        out.json(results)
    else:
        out.table(
            ("PROVIDER", "STATUS", "LATENCY_MS", "CHECKED"),
            [
                (r.get("provider_id"), r.get("status"), r.get("latency_ms"), r.get("checked_at"))
                for r in results
            ],
        )
    if any(r.get("status") != "healthy" for r in results):
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("validate")
def validate(
    ctx: typer.Context,
    kind: Annotated[Kind, typer.Argument(help="gmail or mailgun.")],
    service_account: Annotated[
        Path | None,
        typer.Option(
            "--service-account",
            help="gmail: the service account JSON file.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    test_email: Annotated[
        str | None, typer.Option("--test-email", help="gmail: a mailbox to impersonate.")
    ] = None,
    api_key_env: Annotated[
        str,
        typer.Option("--api-key-env", help="mailgun: environment variable holding the API key."),
    ] = "MAILGUN_API_KEY",
    domain: Annotated[str | None, typer.Option("--domain", help="mailgun: sending domain.")] = None,
    region: Annotated[str, typer.Option("--region", help="mailgun: US or EU.")] = "US",
    json_flag: JsonFlag = False,
) -> None:
    """Check provider credentials without sending (the key is read from the environment,
    never from the command line, so it stays out of shell history).

    With --json: the API's answer ({"valid", ...}). Exit 1 when not valid.
    """
    state = current(ctx)
    out = state.output(json_flag)
    if kind is Kind.gmail:
        if service_account is None:
            exit_with("relayctl: validate gmail needs --service-account FILE", ExitCode.USAGE)
        try:
            document = service_account.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            exit_with(f"relayctl: cannot read {service_account}: {exc}", ExitCode.USAGE)
        with state.session("validate gmail") as client:
            data = client.validate_gmail(document, test_email)
    else:
        api_key = os.environ.get(api_key_env, "")
        if not api_key or not domain:
            exit_with(
                f"relayctl: validate mailgun needs --domain and the key in ${api_key_env}",
                ExitCode.USAGE,
            )
        with state.session("validate mailgun") as client:
            data = client.validate_mailgun(api_key, domain, region)
    if out.json_mode:
        out.json(data)
    else:
        out.fields([(key, value) for key, value in data.items()])
    if data.get("valid") is not True:
        raise typer.Exit(int(ExitCode.FAILED))


@app.command("domains")
def domains(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """List the Mailgun domains of the configured account.

    With --json: {"domains": [{"name", "state", "type", "created_at", "smtp_login",
    "is_disabled", "skip_verification"}]}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("mailgun domains") as client:
        data = client.mailgun_domains()
    if out.json_mode:
        out.json(data)
        return
    out.table(
        ("DOMAIN", "STATE", "TYPE", "CREATED", "SMTP_LOGIN", "DISABLED"),
        [
            (
                d.get("name"),
                d.get("state"),
                d.get("type"),
                d.get("created_at"),
                d.get("smtp_login"),
                d.get("is_disabled"),
            )
            for d in data.get("domains", [])
        ],
        status_column=None,
    )
