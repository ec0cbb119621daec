"""``relayctl webhooks``: signed event endpoints of a workspace, test sends, dead letters."""

from __future__ import annotations

from typing import Annotated

import typer

from relayctl.batch import page_hint
from relayctl.context import ExitCode, current, exit_with

app = typer.Typer(
    name="webhooks", help="Signed event webhooks (per workspace).", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]
WebhookId = Annotated[str, typer.Argument(help="Webhook id (wh_...).", show_default=False)]
WorkspaceId = Annotated[
    str | None, typer.Option("--workspace-id", help="Workspace (default: the caller's).")
]
EVENT_TYPES = (
    "delivered",
    "opened",
    "clicked",
    "unsubscribed",
    "complained",
    "bounced",
    "soft_bounced",
    "rejected",
    "*",
)
NOT_FOUND_HINT = "list webhooks with: relayctl webhooks ls"


@app.command("ls")
def list_webhooks(
    ctx: typer.Context,
    dead: Annotated[
        bool, typer.Option("--dead", help="List dead-lettered deliveries instead.")
    ] = False,
    workspace_id: WorkspaceId = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many.")] = 0,
    json_flag: JsonFlag = False,
) -> None:
    """List webhooks, or with --dead the dead-letter list.

    With --json: {"webhooks": [...]} or {"deliveries": [...]}, with "pagination".
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("list webhooks") as client:
        if dead:
            page = client.webhook_deliveries(status="dead", limit=limit, offset=offset)
        else:
            page = client.list_webhooks(workspace_id, limit=limit, offset=offset)
    if out.json_mode:
        out.json(page)
        return
    rows: list[tuple[object, ...]]
    if dead:
        rows = [
            (
                d.get("id"),
                d.get("webhook_id"),
                d.get("event_type"),
                d.get("attempts"),
                d.get("last_error"),
                d.get("created_at"),
            )
            for d in page.get("deliveries", [])
        ]
        out.table(
            ("DELIVERY", "WEBHOOK", "EVENT", "ATTEMPTS", "LAST ERROR", "CREATED"),
            rows,
            status_column=None,
        )
    else:
        rows = [
            (
                w.get("id"),
                w.get("url"),
                ",".join(w.get("event_types") or []),
                "yes" if w.get("enabled") else "no",
                w.get("workspace_id"),
            )
            for w in page.get("webhooks", [])
        ]
        out.table(("ID", "URL", "EVENTS", "ENABLED", "WORKSPACE"), rows, status_column=None)
    if not page_hint(out, page, len(rows), offset):
        out.note(f"{len(rows)} of {len(rows)}")


@app.command("add")
def add_webhook(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Endpoint URL (http or https).", show_default=False)],
    event: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help=f"Event type ({', '.join(EVENT_TYPES)}); repeatable."),
    ] = None,
    description: Annotated[str | None, typer.Option("--description", help="A note.")] = None,
    workspace_id: WorkspaceId = None,
    json_flag: JsonFlag = False,
) -> None:
    """Register an endpoint (default: every event type). Prints its signing secret, once.

    relayd delivers nowhere loopback, private or link-local unless its webhooks.allowlist
    names the host; it refuses such an address (or localhost) here already.
    """
    types = event or ["*"]
    for item in types:
        if item not in EVENT_TYPES:
            raise typer.BadParameter(
                f"must be one of {', '.join(EVENT_TYPES)}", param_hint="--event"
            )
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"add webhook {url}") as client:
        data = client.create_webhook(url, types, description, workspace_id)
    if out.json_mode:
        out.json(data)
        return
    out.line(str(data.get("id")))
    out.line(f"secret: {data.get('secret')}")
    out.note("the secret is shown only now: keep it to check X-Relay-Signature")


@app.command("rm")
def remove_webhook(ctx: typer.Context, webhook_id: WebhookId, json_flag: JsonFlag = False) -> None:
    """Remove an endpoint and its queued deliveries."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"remove {webhook_id}", NOT_FOUND_HINT) as client:
        data = client.delete_webhook(webhook_id)
    if out.json_mode:
        out.json(data)
    else:
        out.line(str(data.get("message") or f"removed {webhook_id}"))


@app.command("test")
def test_webhook(ctx: typer.Context, webhook_id: WebhookId, json_flag: JsonFlag = False) -> None:
    """Send one signed test event now; exits non-zero when the endpoint did not take it."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"test {webhook_id}", NOT_FOUND_HINT) as client:
        data = client.test_webhook(webhook_id)
    if out.json_mode:
        out.json(data)
    elif data.get("delivered"):
        out.line(f"delivered (HTTP {data.get('status_code')})")
    if not data.get("delivered"):
        exit_with(f"relayctl: test of {webhook_id} failed: {data.get('error')}", ExitCode.FAILED)


@app.command("replay")
def replay(
    ctx: typer.Context,
    delivery_id: Annotated[
        str | None, typer.Argument(help="A dead delivery (dlv_...).", show_default=False)
    ] = None,
    webhook: Annotated[
        str | None, typer.Option("--webhook", help="Every dead delivery of this webhook.")
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Resend dead-lettered deliveries: one by id, or all of a webhook with --webhook."""
    if bool(delivery_id) == bool(webhook):
        raise typer.BadParameter("give a delivery id or --webhook, not both")
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("replay", NOT_FOUND_HINT) as client:
        data = client.replay_webhooks(delivery_id=delivery_id, webhook_id=webhook)
    if out.json_mode:
        out.json(data)
    else:
        out.line(f"{data.get('replayed', 0)} delivery(ies) queued again")
