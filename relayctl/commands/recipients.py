"""``relayctl recipients``: list, show, add, update, remove and import recipients."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from relayctl.batch import page_hint, read_csv, run_rows, summarize
from relayctl.client import Client
from relayctl.context import ExitCode, current, exit_with
from relayctl.errors import ApiError

app = typer.Typer(
    name="recipients", help="Manage recipients (per workspace).", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]
Email = Annotated[str, typer.Argument(help="The recipient's address.", show_default=False)]
WorkspaceId = Annotated[
    str | None, typer.Option("--workspace-id", help="Workspace (default: the caller's).")
]
FirstName = Annotated[str | None, typer.Option("--first-name", help="First name.")]
LastName = Annotated[str | None, typer.Option("--last-name", help="Last name.")]
Meta = Annotated[list[str] | None, typer.Option("--meta", help="Metadata 'key=value'; repeatable.")]
STATUSES = ("ACTIVE", "UNSUBSCRIBED", "BOUNCED", "COMPLAINED")
NOT_FOUND_HINT = "list recipients with: relayctl recipients ls"
COLUMNS = ("EMAIL", "STATUS", "FIRST", "LAST", "WORKSPACE", "BOUNCES", "UPDATED")
KNOWN_COLUMNS = {"email", "first_name", "last_name", "status", "user_id", "campaign_id"}


def parse_meta(items: list[str] | None) -> dict[str, str] | None:
    """``key=value`` pairs as a dict (None when there are none)."""
    if not items:
        return None
    meta: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not 'key=value'", param_hint="--meta")
        meta[key.strip()] = value
    return meta


def check_status(value: str | None) -> str | None:
    if value is not None and value.upper() not in STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(STATUSES)}", param_hint="--status")
    return value.upper() if value else None


@app.command("ls")
def list_recipients(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help=", ".join(STATUSES))] = None,
    email: Annotated[str | None, typer.Option("--email", help="Address contains this.")] = None,
    workspace_id: WorkspaceId = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    json_flag: JsonFlag = False,
) -> None:
    """List recipients. With --json: {"recipients": [...], "pagination": {...}}."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("list recipients") as client:
        page = client.list_recipients(check_status(status), email, limit, offset, workspace_id)
    if out.json_mode:
        out.json(page)
        return
    rows = [
        (
            r.get("email"),
            r.get("status"),
            r.get("first_name"),
            r.get("last_name"),
            r.get("workspace_id"),
            r.get("bounce_count"),
            r.get("updated_at"),
        )
        for r in page.get("recipients", [])
    ]
    out.table(COLUMNS, rows)
    if not page_hint(out, page, len(rows), offset):
        out.note(f"{len(rows)} of {len(rows)}")


@app.command("show")
def show_recipient(
    ctx: typer.Context, email: Email, workspace_id: WorkspaceId = None, json_flag: JsonFlag = False
) -> None:
    """Show one recipient with engagement and metadata. With --json: the API's object."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"show {email}", NOT_FOUND_HINT) as client:
        data = client.get_recipient(email, workspace_id)
    if out.json_mode:
        out.json(data)
        return
    plain = [(k, v) for k, v in data.items() if not isinstance(v, dict)]
    out.fields(plain)
    for key in ("engagement", "metadata"):
        if data.get(key):
            out.mapping(data[key], title=key.capitalize())


@app.command("add")
def add_recipient(
    ctx: typer.Context,
    email: Email,
    first_name: FirstName = None,
    last_name: LastName = None,
    opt_in: Annotated[bool, typer.Option("--opt-in/--no-opt-in", help="Opted in.")] = True,
    meta: Meta = None,
    workspace_id: WorkspaceId = None,
    json_flag: JsonFlag = False,
) -> None:
    """Add a recipient. With --json: {"id", "email", "status", "created_at"}."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"add {email}") as client:
        data = client.add_recipient(
            email,
            first_name=first_name,
            last_name=last_name,
            opt_in=opt_in,
            metadata=parse_meta(meta),
            workspace_id=workspace_id,
        )
    if out.json_mode:
        out.json(data)
    else:
        out.line(f"{data.get('email', email)} {data.get('status', '')}".strip())


@app.command("update")
def update_recipient(
    ctx: typer.Context,
    email: Email,
    first_name: FirstName = None,
    last_name: LastName = None,
    status: Annotated[str | None, typer.Option("--status", help=", ".join(STATUSES))] = None,
    meta: Meta = None,
    workspace_id: WorkspaceId = None,
    json_flag: JsonFlag = False,
) -> None:
    """Change a recipient's names, status or metadata. With --json: the API's answer."""
    fields = {
        "first_name": first_name,
        "last_name": last_name,
        "status": check_status(status),
        "metadata": parse_meta(meta),
        "workspace_id": workspace_id,
    }
    if not any(v is not None for k, v in fields.items() if k != "workspace_id"):
        exit_with("relayctl: nothing to update (see relayctl recipients update -h)", ExitCode.USAGE)
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"update {email}", NOT_FOUND_HINT) as client:
        data = client.update_recipient(email, **fields)
    if out.json_mode:
        out.json(data)
    else:
        out.line(f"{data.get('email', email)} {data.get('status', '')}".strip())


@app.command("rm")
def remove_recipient(
    ctx: typer.Context, email: Email, workspace_id: WorkspaceId = None, json_flag: JsonFlag = False
) -> None:
    """Remove a recipient. With --json: {"message": ...}."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"rm {email}", NOT_FOUND_HINT) as client:
        data = client.delete_recipient(email, workspace_id)
    if out.json_mode:
        out.json(data)
    else:
        out.line(f"{email} removed")


def import_row(client: Client, row: dict[str, str], update: bool, workspace_id: str | None) -> str:
    """One CSV row as one API call: an add, or with ``update`` an update when it exists."""
    fields: dict[str, Any] = {
        key: row[key]
        for key in ("first_name", "last_name", "user_id", "campaign_id")
        if row.get(key)
    }
    if row.get("status"):
        fields["status"] = row["status"].upper()
    extra = {k: v for k, v in row.items() if k and k not in KNOWN_COLUMNS and v != ""}
    if extra:
        fields["metadata"] = extra
    try:
        client.add_recipient(row.get("email", ""), workspace_id=workspace_id, **fields)
        return "added"
    except ApiError as exc:
        if not (update and exc.code == "RECIPIENT_EXISTS"):
            raise
    client.update_recipient(row["email"], workspace_id=workspace_id, **fields)
    return "updated"


@app.command("import")
def import_recipients(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="CSV with an 'email' column.", exists=True, dir_okay=False)
    ],
    update: Annotated[
        bool, typer.Option("--update", help="Update recipients that already exist.")
    ] = False,
    workspace_id: WorkspaceId = None,
    json_flag: JsonFlag = False,
) -> None:
    """Import recipients from CSV: email, first_name, last_name, status, user_id, campaign_id;
    other columns become metadata. Each row is applied whole or not at all.

    With --json: {"imported", "refused", "results": [{"row", "email", "outcome"|"error", "code"}]}.
    Exit 0 when every row was applied, 6 when some were refused, 1 when all were.
    """
    rows = read_csv(file)
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("import recipients") as client:
        results = run_rows(
            out, "importing", rows, lambda row: import_row(client, row, update, workspace_id)
        )
    raise typer.Exit(summarize(out, results, "imported", "refused", "outcome"))
