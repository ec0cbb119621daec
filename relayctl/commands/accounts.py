"""``relayctl accounts``: Maylng accounts (a workspace with a plan and a ``maylng_`` key).

With the admin token, ``--account ID`` names the account; with an account's own
key (``--token maylng_...``) the commands act on that account.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from relayctl.context import current

app = typer.Typer(
    name="accounts", help="Maylng accounts: plans and API keys.", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's answer as JSON.")]
AccountOption = Annotated[
    str | None,
    typer.Option("--account", help="Account id (with the admin token); default: the key's own."),
]
PLANS = ("free", "pro", "enterprise")


def _check_plan(plan: str) -> str:
    if plan not in PLANS:
        raise typer.BadParameter(f"must be one of {', '.join(PLANS)}")
    return plan


PlanArgument = Annotated[
    str, typer.Argument(help="free, pro or enterprise.", callback=_check_plan, show_default=False)
]


def _show(out: Any, data: dict[str, Any]) -> None:
    out.fields(
        [
            ("id", data.get("id")),
            ("plan", data.get("plan")),
            ("emails/month", data.get("email_limit_per_month")),
            ("addresses", data.get("email_address_limit")),
            ("created", data.get("created_at")),
            ("updated", data.get("updated_at")),
        ]
    )


@app.command("create")
def create(
    ctx: typer.Context,
    plan: Annotated[
        str, typer.Option("--plan", help="free, pro or enterprise.", callback=_check_plan)
    ] = "free",
    json_flag: JsonFlag = False,
) -> None:
    """Create an account and print its key: it is shown this once, only its hash is kept.

    With --json: {"id", "plan", "email_limit_per_month", "email_address_limit", "api_key", ...}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("create account") as client:
        data = client.create_account(plan)
    if out.json_mode:
        out.json(data)
        return
    out.line(str(data.get("api_key")))
    out.note(f"account {data.get('id')} ({data.get('plan')}): store the key now")


@app.command("show")
def show(ctx: typer.Context, account: AccountOption = None, json_flag: JsonFlag = False) -> None:
    """Show an account: plan and limits."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("show account") as client:
        data = client.get_account(account)
    if out.json_mode:
        out.json(data)
    else:
        _show(out, data)


@app.command("plan")
def plan(
    ctx: typer.Context,
    new_plan: PlanArgument,
    account: AccountOption = None,
    json_flag: JsonFlag = False,
) -> None:
    """Change an account's plan; the new limits apply at once."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"change plan to {new_plan}") as client:
        data = client.update_account(new_plan, account)
    if out.json_mode:
        out.json(data)
    else:
        _show(out, data)


@app.command("rotate-key")
def rotate_key(
    ctx: typer.Context, account: AccountOption = None, json_flag: JsonFlag = False
) -> None:
    """Issue a new account key and print it; the old key stops working at once."""
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("rotate account key") as client:
        data = client.rotate_account_key(account)
    if out.json_mode:
        out.json(data)
        return
    out.line(str(data.get("api_key")))
    out.note("the previous key no longer works: store this one now")


@app.command("delete")
def delete(
    ctx: typer.Context,
    account: AccountOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Delete an account: its keys stop working and its queued mail is cancelled."""
    state = current(ctx)
    out = state.output(json_flag)
    if not yes and not typer.confirm(f"Delete account {account or '(this key)'}?"):
        raise typer.Exit(1)
    with state.session("delete account") as client:
        client.delete_account(account)
    if out.json_mode:
        out.json({"deleted": True, "account": account})
    else:
        out.line(f"account {account or '(this key)'} deleted")
