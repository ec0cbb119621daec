"""``relayctl addresses``: a Maylng account's sender addresses (temporary or persistent)."""

from __future__ import annotations

from typing import Annotated

import typer

from relayctl.commands.accounts import AccountOption, JsonFlag
from relayctl.context import current

app = typer.Typer(
    name="addresses", help="Sender addresses of a Maylng account.", no_args_is_help=True
)
TYPES = ("temporary", "persistent")


def _check_type(value: str) -> str:
    if value not in TYPES:
        raise typer.BadParameter("must be temporary or persistent")
    return value


@app.command("create")
def create(
    ctx: typer.Context,
    prefix: Annotated[
        str | None, typer.Argument(help="Local part; generated when omitted.", show_default=False)
    ] = None,
    kind: Annotated[
        str, typer.Option("--type", help="temporary or persistent.", callback=_check_type)
    ] = "temporary",
    domain: Annotated[
        str | None, typer.Option("--domain", help="A sending domain (default: the relay's).")
    ] = None,
    expires_at: Annotated[
        str | None, typer.Option("--expires-at", help="ISO 8601 time (temporary only).")
    ] = None,
    account: AccountOption = None,
    json_flag: JsonFlag = False,
) -> None:
    """Create a sender address and print it. With --json: the address object."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("create address") as client:
        data = client.create_address(kind, prefix, domain, expires_at, None, account)
    if out.json_mode:
        out.json(data)
        return
    out.line(str(data.get("email")))
    expiry = f", expires {data.get('expires_at')}" if data.get("expires_at") else ""
    out.note(f"id {data.get('id')} ({data.get('type')}{expiry})")


@app.command("ls")
def list_addresses(
    ctx: typer.Context, account: AccountOption = None, json_flag: JsonFlag = False
) -> None:
    """List the account's addresses. With --json: {"email_addresses": [...]}."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("list addresses") as client:
        data = client.list_addresses(account)
    if out.json_mode:
        out.json(data)
        return
    out.table(
        ("ID", "EMAIL", "TYPE", "STATUS", "EXPIRES", "CREATED"),
        [
            (
                a.get("id"),
                a.get("email"),
                a.get("type"),
                a.get("status"),
                a.get("expires_at"),
                a.get("created_at"),
            )
            for a in data.get("email_addresses", [])
        ],
    )


AddressArgument = Annotated[str, typer.Argument(help="Address id.", show_default=False)]


@app.command("disable")
def disable(
    ctx: typer.Context,
    address_id: AddressArgument,
    account: AccountOption = None,
    json_flag: JsonFlag = False,
) -> None:
    """Disable an address: it can no longer send (re-enable through the API)."""
    state = current(ctx)
    out = state.output(json_flag)
    hint = "list addresses with: relayctl addresses ls"
    with state.session(f"disable {address_id}", hint) as client:
        data = client.update_address(address_id, account, status="disabled")
    if out.json_mode:
        out.json(data)
    else:
        out.line(f"{data.get('email')} disabled")


@app.command("rm")
def remove(
    ctx: typer.Context,
    address_id: AddressArgument,
    account: AccountOption = None,
    json_flag: JsonFlag = False,
) -> None:
    """Delete an address (emails already sent from it keep its id)."""
    state = current(ctx)
    out = state.output(json_flag)
    hint = "list addresses with: relayctl addresses ls"
    with state.session(f"delete {address_id}", hint) as client:
        client.delete_address(address_id, account)
    if out.json_mode:
        out.json({"deleted": address_id})
    else:
        out.line(f"{address_id} deleted")
