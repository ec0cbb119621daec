"""``relayctl config``: show the daemon's live configuration, change it at runtime."""

from __future__ import annotations

import difflib
import json
import tomllib
from typing import Annotated, Any

import typer

from relayctl.context import ExitCode, current, exit_with

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


def selects(name: str, key: str) -> bool:
    """Whether dotted ``name`` is ``key`` or lies in section ``key`` ("queue", "queue.")."""
    key = key.rstrip(".")
    return name == key or name.startswith(key + ".")


def paths(tree: dict[str, Any], prefix: str = "") -> set[str]:
    """Every dotted path of the tree: sections and keys."""
    found: set[str] = set()
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        found.add(dotted)
        if isinstance(value, dict):
            found |= paths(value, dotted + ".")
    return found


def subtree(tree: dict[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
    """The part of ``tree`` that ``key`` selects, nested as the whole is."""
    kept: dict[str, Any] = {}
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if selects(dotted, key):
            kept[name] = value
        elif isinstance(value, dict) and key.startswith(dotted + "."):
            inner = subtree(value, key, dotted + ".")
            if inner:
                kept[name] = inner
    return kept


def unknown_key(key: str, known: set[str]) -> str:
    """The usage error for a key the daemon does not have, with the nearest ones."""
    near = sorted(name for name in known if name.startswith(key))[:5]
    near = near or difflib.get_close_matches(key, sorted(known), n=3)
    hint = f"did you mean {', '.join(near)}?" if near else "list them: relayctl config show"
    return f"relayctl: config show: no setting or section {key!r}; {hint}"


@app.command("show")
def show(
    ctx: typer.Context,
    key: Annotated[
        str | None,
        typer.Argument(help="Only this key (smtp.port) or section (smtp, providers.outbox)."),
    ] = None,
    json_flag: JsonFlag = False,
) -> None:
    """Show every setting with its value and where it came from (default, file, env,
    flag, runtime). Secrets are masked by the daemon.

    With --json: {"config": {section: {key: value}}, "sources": {"section.key": origin}}
    (with KEY: only the part of both that KEY selects, in the same shape).
    """
    state = current(ctx)
    out = state.output(json_flag)
    with state.session("config show") as client:
        data = client.get_config()
    config: dict[str, Any] = data.get("config") or {}
    sources: dict[str, Any] = data.get("sources") or {}
    if key is not None:
        if key.rstrip(".") not in paths(config):
            exit_with(unknown_key(key, paths(config)), ExitCode.USAGE)
        config = subtree(config, key)
        sources = {name: origin for name, origin in sources.items() if selects(name, key)}
    if out.json_mode:
        out.json({"config": config, "sources": sources})
        return
    rows = [(name, value, sources.get(name, "default")) for name, value in flatten(config)]
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
