"""Runtime configuration changes (``PUT /api/admin/config``): validated like the file,
stored in the database, layered on top of defaults < file < environment < flags.

The running Config is rebuilt from its own values, each under the origin it came
from, plus the runtime layer, so ``Config.source(key)`` stays true for every key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy.engine import Engine

from daemon.config import SECRET_KEYS, Config, ConfigError, as_dict, build_config
from daemon.core.maintenance import MaintenanceState
from daemon.store.admin import MAINTENANCE_KEY, RUNTIME_CONFIG_KEY, read_settings

log = logging.getLogger("relayd")

Layer = dict[str, Any]
ORIGINS = ("file", "env", "flag", "runtime")
# Settings bound at start-up (sockets, files, the database, per-connection SMTP limits).
RESTART_KEYS = frozenset(
    {
        "data_dir",
        "smtp.host",
        "smtp.port",
        "smtp.tls_port",
        "smtp.hostname",
        "smtp.max_size",
        "smtp.timeout",
        "smtp.tls_cert",
        "smtp.tls_key",
        "smtp.workers",  # the worker pool is sized at start-up
        "http.host",
        "http.port",
        "database.url",
        "health.interval",  # the scheduler's job interval is set at start-up
    }
)
# Restart keys a running Server applies itself (SIGHUP, PUT): the pair it serves to new
# TLS handshakes. Without a Server (the API alone) they still need a restart.
LIVE_TLS_KEYS = frozenset({"smtp.tls_cert", "smtp.tls_key"})
# Provider keys the router reads on every message; the rest is bound into the client.
LIVE_PROVIDER_KEYS = frozenset(
    {"enabled", "priority", "weight", "rate_limit", "rate_limit_per_second", "workspace_id"}
)
LOCKED = ("data_dir", "auth")
# Where a provider sends the credentials the file or environment gives it. Moved through
# the API, they would go to whatever server the caller names: the API never shows a
# secret, and must not hand it to someone else's server either.
CREDENTIAL_DESTINATION_KEYS = frozenset(
    {"host", "port", "tls", "tls_verify", "base_url", "region", "token_url"}
)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"queue": {"batch_size": 5}}`` -> ``("queue.batch_size", 5)``; providers nest twice."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and (prefix.count(".") < 1 or dotted.startswith("providers")):
            yield from flatten(value, dotted + ".")
        else:
            yield dotted, value


def _insert(tree: Layer, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if parts[0] == "providers" and len(parts) > 3:
        parts = [*parts[:2], ".".join(parts[2:])]
    node = tree
    for index, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):  # {"queue": 1, "queue.batch_size": 2}
            where = ".".join(parts[: index + 1])
            raise ConfigError(dotted, f"conflicts with the value given for {where}")
        node = child
    node[parts[-1]] = value


def settled(config: Config) -> dict[str, Any]:
    """Every dotted key of ``config`` with its effective value (secrets not masked)."""
    flat = dict(flatten(as_dict(config, mask_secrets=False)))
    for key, value in list(flat.items()):
        if key.startswith("providers.") and key.endswith(".workspace_id") and value is None:
            flat[key] = ""
    return flat


def apply_runtime(base: Config, runtime: Mapping[str, Any]) -> Config:
    """``base`` with the runtime layer on top; raises ConfigError naming a bad key."""
    layers: dict[str, Layer] = {origin: {} for origin in ORIGINS}
    for key, value in settled(base).items():
        origin = base.source(key)
        if origin in layers and origin != "runtime":
            _insert(layers[origin], key, value)
    layers["runtime"] = dict(runtime)
    return build_config([(origin, layers[origin]) for origin in ORIGINS if layers[origin]])


def check_update(base: Config, update: Any) -> list[tuple[str, Any]]:
    """The dotted assignments of a ``PUT`` body, refusing what must not change at runtime."""
    if not isinstance(update, dict) or not update:
        raise ConfigError("body", 'expected a JSON object of sections, e.g. {"queue": {...}}')
    pairs = list(flatten(update))
    for key, value in pairs:
        parts = key.split(".")
        if parts[0] in LOCKED:
            raise ConfigError(key, "cannot be changed through the API; edit the config file")
        if parts[-1] in SECRET_KEYS or parts[-1].endswith("_file"):
            raise ConfigError(
                key, "secrets are set in the config file or the environment, never stored"
            )
        if parts[0] == "providers":
            if len(parts) != 3:
                raise ConfigError(key, "expected providers.<id>.<key>")
            if parts[1] not in base.providers:
                raise ConfigError(key, f"no provider {parts[1]!r}; add it to the config file")
            if parts[2] == "type":
                raise ConfigError(key, "a provider's type cannot change at runtime")
            if parts[2] in CREDENTIAL_DESTINATION_KEYS:
                raise ConfigError(
                    key,
                    "where a provider sends its credentials is set in the config file or"
                    " the environment, not through the API",
                )
        if isinstance(value, dict):
            raise ConfigError(key, "expected a value, not a table")
    return pairs


def merge(runtime: Mapping[str, Any], pairs: list[tuple[str, Any]]) -> Layer:
    """The runtime layer after an update; a ``null`` value drops that override."""
    flat = dict(flatten(runtime))
    for key, value in pairs:
        if value is None:
            flat.pop(key, None)
        else:
            flat[key] = value
    tree: Layer = {}
    for key, value in flat.items():
        _insert(tree, key, value)
    return tree


def changed(old: Config, new: Config) -> list[str]:
    """Dotted keys whose effective value differs."""
    before, after = settled(old), settled(new)
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def needs_restart(keys: list[str], old: Config) -> list[str]:
    """The changed keys a running daemon cannot apply until it restarts."""
    out = []
    for key in keys:
        parts = key.split(".")
        bound_provider = parts[0] == "providers" and (
            parts[1] not in old.providers or parts[-1] not in LIVE_PROVIDER_KEYS
        )
        if key in RESTART_KEYS or bound_provider:
            out.append(key)
    return out


def restore(config: Config, engine: Engine) -> tuple[Config, Layer, MaintenanceState]:
    """At start-up: the stored runtime layer applied to ``config``, and the maintenance state.

    A stored layer the current file no longer accepts (a provider removed...) is
    ignored with an error in the log rather than keeping the daemon down.
    """
    stored = read_settings(engine, RUNTIME_CONFIG_KEY, MAINTENANCE_KEY)
    runtime = stored.get(RUNTIME_CONFIG_KEY)
    runtime = runtime if isinstance(runtime, dict) else {}
    maintenance = MaintenanceState.from_json(stored.get(MAINTENANCE_KEY))
    if maintenance.enabled:
        log.warning(
            "maintenance mode is on (since %s): %s", maintenance.started_at, maintenance.message
        )
    if not runtime:
        return config, {}, maintenance
    try:
        return apply_runtime(config, runtime), runtime, maintenance
    except ConfigError as exc:
        log.error("ignoring the stored runtime configuration: %s", exc)
        return config, {}, maintenance
