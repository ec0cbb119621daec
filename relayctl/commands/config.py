"""``relayctl config``: show the daemon's live configuration, change it at runtime."""

from __future__ import annotations

import json
import tomllib
from typing import Annotated, Any

import typer

from relayctl.context import current

app = typer.Typer(name="config", help="The daemon's live configuration.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested sections as dotted keys (providers nest twice)."""
    pairs: list[tuple[str, Any]] = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs.extend(flatten(value, dotted + "."))
        else:
            pairs.append((dotted, value))
    return pairs


def parse_value(text: str) -> Any:
    """A TOML value (100, true, "15s", ["a", "b"]) or, failing that, the text itself;
    ``null`` removes the runtime override."""
    if text == "null":
        return None
    try:
        value = tomllib.loads(f"v = {text}")["v"]
        # inf, nan and dates are TOML but not JSON: the daemon judges them as text.
        json.dumps(value, allow_nan=False)
    except (tomllib.TOMLDecodeError, ValueError, TypeError):
        return text
    return value


def nest(key: str, value: Any) -> dict[str, Any]:
    """``queue.batch_size`` -> ``{"queue": {"batch_size": value}}``."""
    parts = key.split(".")
    if parts[0] == "providers" and len(parts) > 3:
        parts = [*parts[:2], ".".join(parts[2:])]
    tree: dict[str, Any] = {}
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


@app.command("show")
def show(
    ctx: typer.Context,
    key: Annotated[str | None, typer.Argument(help="Only keys starting with this.")] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Show every setting with its value and where it came from (default, file, env,
    flag, runtime). Secrets are masked by the daemon.

    With --json: {"config": {section: {key: value}}, "sources": {"section.key": origin}}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("config show") as client:
        data = client.get_config()
    if out.json_mode:
        out.json(data)
        return
    sources = data.get("sources") or {}
    rows = [
        (name, value, sources.get(name, "default"))
        for name, value in flatten(data.get("config") or {})
        if key is None or name.startswith(key)
    ]
    out.table(("KEY", "VALUE", "SOURCE"), rows, status_column=None)


@app.command("set")
def set_value(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Dotted key, e.g. queue.batch_size.")],
    value: Annotated[str, typer.Argument(help="New value (TOML syntax; null drops the override).")],
    json_flag: JsonFlag = False,
) -> None:
    """Change a setting at runtime; it is stored and survives restarts.

    Prints whether a restart is needed for it to take effect. With --json:
    {"restart_required", "message", "changed", "restart_required_for"}.
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session(f"config set {key}") as client:
        data = client.update_config(nest(key, parse_value(value)))
    if out.json_mode:
        out.json(data)
        return
    changed = data.get("changed") or []
    out.line(f"{key} set" if changed else f"{key} unchanged")
    if data.get("restart_required"):
        out.line("restart required for: " + ", ".join(data.get("restart_required_for") or []))
