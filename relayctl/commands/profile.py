"""``relayctl profile``: named daemons and tokens in ~/.config/relayctl/config.toml.

A profile file that cannot be read or written (not UTF-8, not TOML, a field that is not a
string, a directory in the way) is exit 2 from every subcommand; an unknown name is exit 3.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from relayctl.client import check_base_url
from relayctl.context import ExitCode, current, exit_with
from relayctl.errors import RelayError
from relayctl.profiles import Profile, ProfileError, ProfileNotFoundError, ProfileStore
from relayctl.settings import redact_url

app = typer.Typer(
    name="profile", help="Connection profiles (url, token, workspace).", no_args_is_help=True
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Name = Annotated[str, typer.Argument(help="Profile name.")]


def _store() -> ProfileStore:
    return ProfileStore()


@contextmanager
def _profile_errors() -> Iterator[None]:
    """A profile error inside the block becomes one line: 3 for an unknown name, else 2."""
    try:
        yield
    except ProfileNotFoundError as exc:
        exit_with(f"relayctl: {exc}", ExitCode.NOT_FOUND)
    except ProfileError as exc:
        exit_with(f"relayctl: {exc}", ExitCode.USAGE)


@app.command("add")
def add(
    name: Name,
    url: Annotated[str | None, typer.Option("--url", help="relayd's HTTP URL.")] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", help="API token (stored in the file, mode 0600)."),
    ] = None,
    workspace: Annotated[str | None, typer.Option("--workspace", help="Workspace id.")] = None,
    use: Annotated[bool, typer.Option("--use", help="Make it the current profile.")] = False,
) -> None:
    """Add or replace a profile (the file is written with mode 0600)."""
    if token is None and url is None and workspace is None:
        exit_with("relayctl: profile add needs --url, --token or --workspace", ExitCode.USAGE)
    if url is not None:
        try:
            check_base_url(url)
        except RelayError as exc:
            exit_with(f"relayctl: --url: {exc.message}", ExitCode.USAGE)
    store = _store()
    with _profile_errors():
        store.add(Profile(name, url, token, workspace), make_current=use)
    typer.echo(f"profile {name} saved in {store.path}")


@app.command("ls")
def list_profiles(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """List profiles (tokens masked). With --json: {"current", "profiles": {name: {...}}}."""
    out = current(ctx).output(json_flag)
    store = _store()
    with _profile_errors():
        profiles, selected = store.profiles(), store.current()
    if out.json_mode:
        out.json(
            {
                "current": selected,
                "profiles": {
                    n: {"url": _shown(p.url), "workspace": p.workspace, "has_token": bool(p.token)}
                    for n, p in profiles.items()
                },
            }
        )
        return
    out.table(
        ("CURRENT", "NAME", "URL", "WORKSPACE", "TOKEN"),
        [
            (
                "*" if n == selected else "",
                n,
                _shown(p.url),
                p.workspace,
                "set" if p.token else None,
            )
            for n, p in sorted(profiles.items())
        ],
        status_column=None,
    )


@app.command("use")
def use(name: Name) -> None:
    """Make a profile the current one."""
    with _profile_errors():
        _store().use(name)
    typer.echo(f"using profile {name}")


@app.command("rm")
def remove(name: Name) -> None:
    """Delete a profile."""
    with _profile_errors():
        _store().remove(name)
    typer.echo(f"profile {name} removed")


def _shown(url: str | None) -> str | None:
    """A profile's URL as listed: like its token, a password in it is not shown."""
    return redact_url(url) if url else url
