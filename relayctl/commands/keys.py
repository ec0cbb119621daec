"""``relayctl keys``: create, list and revoke workspace API keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from relayctl.batch import page_hint
from relayctl.context import current

app = typer.Typer(name="keys", help="Workspace API keys.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's data object as JSON.")]


@app.command("create")
def create(
    ctx: typer.Context,
    workspace_id: Annotated[str, typer.Argument(help="Workspace the key acts in.")],
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
    user_id: Annotated[str | None, typer.Option("--user-id", help="User the key sends as.")] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Create a key and print it: it is shown this once, only its prefix is kept.

    With --json: {"id", "key", "prefix", "workspace_id", "created_at"}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"create key in {workspace_id}") as client:
        data = client.create_key(workspace_id, name, user_id)
    if out.json_mode:
        out.json(data)
        return
    out.line(str(data.get("key")))
    out.note(f"id {data.get('id')}: store the key now, it cannot be shown again")


@app.command("ls")
def list_keys(
    ctx: typer.Context,
    workspace_id: Annotated[
        str | None, typer.Option("--workspace-id", help="Only this workspace's keys.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Keys per page.")] = 100,
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many.")] = 0,
    json_flag: JsonFlag = False,
) -> None:
    """List keys by prefix (never the keys). With --json: {"keys": [...], "pagination"}."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("list keys") as client:
        data = client.list_keys(workspace_id, limit=limit, offset=offset)
    if out.json_mode:
        out.json(data)
        return
    keys: list[dict[str, Any]] = data.get("keys", [])
    out.table(
        ("ID", "PREFIX", "WORKSPACE", "USER", "NAME", "CREATED", "LAST_USED", "REVOKED"),
        [
            (
                k.get("id"),
                k.get("prefix"),
                k.get("workspace_id"),
                k.get("user_id"),
                k.get("name"),
                k.get("created_at"),
                k.get("last_used_at"),
                k.get("revoked_at"),
            )
            for k in keys
        ],
        status_column=None,
    )
    page_hint(out, data, len(keys), offset)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="Key id (key_...).")],
    json_flag: JsonFlag = False,
) -> None:
    """Revoke a key; requests with it are refused from now on. With --json: {"message"}."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"revoke {key_id}", "list key ids with: relayctl keys ls") as client:
        data = client.revoke_key(key_id)
    if out.json_mode:
        out.json(data)
    else:
        out.line(f"{key_id} revoked")
