"""One typed, frozen Config, built once from defaults < TOML < environment < flags < runtime.

Every setting is declared once in the section dataclasses below; the loader, the
environment mapping, ``relayd check-config`` and the test that compares
``config.example.toml`` all read those declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import ipaddress
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from daemon.core.durations import Duration

ConfigValue = str | int | float | bool | list[str] | Duration | None


class ConfigError(Exception):
    """A setting is unknown, of the wrong type or out of range; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def _did_you_mean(name: str, known: typing.Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for a near miss, else nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


def _address(value: str) -> None:
    if not value.strip():
        raise ValueError(
            "is empty; use 127.0.0.1 for this machine only, or 0.0.0.0 / :: for every interface"
        )


def _non_empty(value: str) -> None:
    if not value.strip():
        raise ValueError("must not be empty")


def _port(value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number between 1 and 65535 (0 picks a free port)")


def _positive(value: int) -> None:
    if value < 1:
        raise ValueError("must be at least 1")


def _non_negative(value: int) -> None:
    if value < 0:
        raise ValueError("cannot be negative")


def _networks(value: list[str]) -> None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"{item!r} is not an IP network (e.g. 127.0.0.0/8)") from None


def _choice(*allowed: str) -> typing.Callable[[str], None]:
    def check(value: str) -> None:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(repr(a) for a in allowed)}")

    return check


def _subset_of(values: list[str], allowed: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ValueError(f"unknown {', '.join(unknown)}; use {', '.join(allowed)}")


def _database_url(value: str) -> None:
    """A URL relayd can keep its queue in: a SQLite file, or PostgreSQL through psycopg 3."""
    if not value:
        return
    from sqlalchemy.engine import make_url  # here: config is read before anything needs it
    from sqlalchemy.exc import ArgumentError

    hint = "expected sqlite:///path/to/relay.db or postgresql+psycopg://user@host/db"
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(f"not a database URL; {hint}") from None
    backend, driver = url.get_backend_name(), url.drivername.partition("+")[2]
    if backend == "sqlite":
        if driver not in ("", "pysqlite"):
            raise ValueError(f"relayd uses Python's sqlite3 driver, not {driver!r}; {hint}")
        if not url.database or url.database == ":memory:" or url.query.get("mode") == "memory":
            raise ValueError(
                "an in-memory SQLite database loses the queue when relayd stops; "
                "name a file: sqlite:///path/to/relay.db"
            )
    elif backend == "postgresql":
        if driver != "psycopg":
            raise ValueError(
                f"relayd talks to PostgreSQL through psycopg 3, not {driver or 'psycopg2'!r}: "
                "write postgresql+psycopg://..."
            )
    else:
        raise ValueError(f"relayd keeps its queue in SQLite or PostgreSQL, not {backend!r}; {hint}")


def _readable_file(value: str) -> None:
    if value and not os.access(value, os.R_OK):
        raise ValueError(f"cannot read file {value!r}")


def read_secret_file(value: str) -> str:
    """The stripped text of a secret's file, or ValueError saying why it cannot be one:
    missing, unreadable, a directory, not UTF-8 text, or empty (an empty key signs
    nothing, an empty token opens nothing)."""
    _readable_file(value)
    try:
        data = Path(value).read_bytes()
    except IsADirectoryError:
        raise ValueError(f"{value!r} is a directory, not a file") from None
    except OSError as exc:
        raise ValueError(f"cannot read file {value!r}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"file {value!r} is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise ValueError(f"file {value!r} is empty")
    return text.strip()


def _secret_file(value: str) -> None:
    """A secret's file must be readable text and hold something (:func:`read_secret_file`)."""
    if value:
        read_secret_file(value)


BLANK_ADMIN_TOKEN = (
    "is blank; set the token, or leave it empty to have relayd generate one"
    " into data_dir/admin.token"
)


def _admin_token(value: str) -> None:
    """Empty asks relayd to generate the token; blank is a mistake, never a token."""
    if value and not value.strip():
        raise ValueError(BLANK_ADMIN_TOKEN)


def _jwt_secret(value: str) -> None:
    if value and len(value.encode()) < 32:
        raise ValueError("must be at least 32 bytes (HS256 needs a key as long as its hash)")


def _at_most_a_minute(value: Duration) -> None:
    if value.seconds > 60:
        raise ValueError("must be at most 60s (the client is waiting for the reply)")


def setting(default: Any, doc: str, check: typing.Callable[[Any], None] | None = None) -> Any:
    """Declare one setting: its default, a one-line description and an optional check."""
    meta = {"doc": doc, "check": check}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SmtpConfig:
    host: str = setting("127.0.0.1", "address the SMTP listeners bind to", _address)
    port: int = setting(2525, "SMTP port with STARTTLS", _port)
    tls_port: int = setting(2526, "SMTP port with implicit TLS (SMTPS); 0 picks one", _port)
    hostname: str = setting("", "name announced in the greeting; empty: the machine's FQDN")
    max_size: int = setting(26214400, "largest message accepted, in bytes", _positive)
    timeout: Duration = setting(Duration(300.0, "300s"), "idle time before a session is closed")
    trusted_networks: list[str] = setting(
        ["127.0.0.0/8", "::1/128"], "clients allowed to relay without AUTH", _networks
    )
    require_auth: bool = setting(False, "demand AUTH even from trusted networks")
    auth_failure_delay: Duration = setting(
        Duration(1.0, "1s"),
        "pause before answering a failed AUTH (535), to slow password guessing; 0: none",
        _at_most_a_minute,
    )
    auth_max_failures: int = setting(
        3,
        "failed AUTH attempts in one session before it is closed with 421 4.7.0 (0: never)",
        _non_negative,
    )
    auth_lockout_failures: int = setting(
        10,
        "failed AUTH attempts from one client address within auth_lockout_window after which"
        " its AUTH is refused (421 4.7.0) until they age out; counted by each SMTP worker"
        " process (0: no lockout)",
        _non_negative,
    )
    auth_lockout_window: Duration = setting(
        Duration(600.0, "10m"), "the window auth_lockout_failures counts failures in"
    )
    bare_newline: str = setting(
        "reject", "bare CR or LF in DATA: reject (5xx) or normalize", _choice("reject", "normalize")
    )
    tls_cert: str = setting(
        "", "PEM certificate; empty: a self-signed one in data_dir", _readable_file
    )
    tls_key: str = setting("", "PEM private key for tls_cert", _readable_file)
    workers: int = setting(
        1,
        "SMTP worker processes sharing the ports, each with its own event loop and"
        " database connection, beside the daemon's delivery and API; 0 serves SMTP"
        " in the daemon's own process",
        _non_negative,
    )


@dataclass(frozen=True)
class HttpConfig:
    host: str = setting("127.0.0.1", "address the HTTP API binds to", _address)
    port: int = setting(8080, "HTTP API port", _port)
    metrics_networks: list[str] = setting(
        ["127.0.0.0/8", "::1/128"], "clients that may read /metrics without a token", _networks
    )
    auth_lockout_failures: int = setting(
        10,
        "failed authentications (401 INVALID_TOKEN) from one client address within"
        " auth_lockout_window after which its requests with credentials get 429"
        " RATE_LIMIT_EXCEEDED until they age out; loopback included (0: no lockout)",
        _non_negative,
    )
    auth_lockout_window: Duration = setting(
        Duration(600.0, "10m"), "the window auth_lockout_failures counts failures in"
    )


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = setting(
        "", "sqlite:///path or postgresql+psycopg://...; empty: data_dir/relay.db", _database_url
    )


@dataclass(frozen=True)
class QueueConfig:
    batch_size: int = setting(50, "messages claimed per batch", _positive)
    process_interval: Duration = setting(
        Duration(30.0, "30s"), "fallback poll interval (new mail wakes the workers at once)"
    )
    max_retries: int = setting(
        3, "temporary failures retried before a message fails", _non_negative
    )
    max_depth: int = setting(
        0, "pending messages accepted before refusing (0: unbounded)", _non_negative
    )
    concurrency: int = setting(64, "deliveries in flight at once", _positive)
    lease: Duration = setting(
        Duration(300.0, "5m"), "how long a claim holds before another worker may take it"
    )
    retry_base: Duration = setting(Duration(60.0, "1m"), "first retry delay; doubles each attempt")
    retry_max: Duration = setting(
        Duration(3600.0, "1h"), "longest retry delay (0: no cap below 36500d)"
    )
    delay_warning: Duration = setting(
        Duration(14400.0, "4h"),
        "undelivered this long (deferred, or waiting for a provider), a message sends one"
        " delay DSN to the senders who asked (NOTIFY=DELAY); 0: never",
    )
    shutdown_grace: Duration = setting(
        Duration(20.0, "20s"), "time in-flight deliveries get on SIGTERM"
    )


@dataclass(frozen=True)
class RateLimitsConfig:
    global_daily: int = setting(
        100000, "messages per day for the whole relay (0: unlimited)", _non_negative
    )
    workspace_default: int = setting(10000, "messages per day per workspace", _non_negative)
    user_default: int = setting(500, "messages per day per user", _non_negative)
    default_plan: str = setting(
        "free", "plan of a new workspace", _choice("free", "basic", "pro", "enterprise")
    )


@dataclass(frozen=True)
class AuthConfig:
    admin_token: str = setting(
        "", "admin API token; empty: generated into data_dir/admin.token", _admin_token
    )
    admin_token_file: str = setting("", "file holding the admin token (mode 0600)", _secret_file)
    jwt_secret: str = setting(
        "", "HS256 secret for Bearer JWTs; empty: JWTs are not accepted", _jwt_secret
    )
    jwt_secret_file: str = setting("", "file holding jwt_secret (mode 0600)", _readable_file)


def _tracking_overrides(value: list[str]) -> None:
    for item in value:
        workspace, sep, mode = item.partition("=")
        if not sep or not workspace.strip() or mode.strip() not in TRACKING_MODES:
            raise ValueError(
                f"{item!r} is not 'workspace=mode' with mode one of {', '.join(TRACKING_MODES)}"
            )


def _allowlist(value: list[str]) -> None:
    for item in value:
        if not item.strip() or any(c.isspace() for c in item.strip()):
            raise ValueError(f"{item!r} is not a host name, address or network")


def _delays(value: list[str]) -> None:
    if not value:
        raise ValueError("needs at least one delay")
    for item in value:
        Duration.parse(item)


TRACKING_MODES = ("off", "none", "opens", "clicks", "all")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = setting(False, "rewrite outgoing mail for open/click tracking and unsubscribe")
    base_url: str = setting(
        "", "public URL the tracking links point to; empty: the HTTP listener's own URL"
    )
    secret: str = setting("", "HMAC key of tracking links; empty: generated into data_dir")
    secret_file: str = setting("", "file holding the tracking secret (mode 0600)", _secret_file)
    open_tracking: bool = setting(True, "add an open pixel to HTML parts")
    click_tracking: bool = setting(True, "rewrite http(s) links of HTML parts")
    list_unsubscribe: bool = setting(
        True, "add List-Unsubscribe (RFC 8058 one-click) to campaign mail"
    )
    workspaces: list[str] = setting(
        [], "per-workspace overrides 'ws-id=off|none|opens|clicks|all'", _tracking_overrides
    )


@dataclass(frozen=True)
class WebhooksConfig:
    mandrill_key: str = setting("", "Mandrill webhook key; set: only signed posts are taken")
    mandrill_key_file: str = setting("", "file holding mandrill_key (mode 0600)", _secret_file)
    mandrill_url: str = setting("", "the exact URL Mandrill posts to (it is part of the signature)")
    allowlist: list[str] = setting(
        [], "hosts or networks webhooks may reach although private or loopback", _allowlist
    )
    timeout: Duration = setting(Duration(10.0, "10s"), "time one webhook delivery may take")
    retry_delays: list[str] = setting(
        ["30s", "2m", "10m", "30m", "1h", "2h", "4h", "4h"],
        "waits between delivery attempts; after the last, a delivery is dead-lettered",
        _delays,
    )
    batch_size: int = setting(20, "deliveries sent at once", _positive)


@dataclass(frozen=True)
class BouncesConfig:
    domain: str = setting("", "VERP return-path domain (bounces+<id>@domain); empty: no VERP")
    soft_bounce_threshold: int = setting(
        3, "soft bounces within the window that make a recipient BOUNCED", _positive
    )
    soft_bounce_window_days: int = setting(
        7, "window for soft_bounce_threshold, in days", _positive
    )


@dataclass(frozen=True)
class HealthConfig:
    interval: Duration = setting(
        Duration(60.0, "60s"), "how often every provider gets a health check"
    )
    timeout: Duration = setting(Duration(10.0, "10s"), "longest a health check may take")
    degraded_after: int = setting(
        2, "consecutive failures that mark a provider degraded", _positive
    )
    down_after: int = setting(
        5, "consecutive failures that mark a provider down (circuit open)", _positive
    )
    cooldown: Duration = setting(
        Duration(30.0, "30s"), "time a down provider rests before one probe message"
    )


def _at_least_a_second(value: Duration) -> None:
    if value.seconds < 1:
        raise ValueError("must be at least 1s")


_DOMAIN = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


def _domains(value: list[str]) -> None:
    for item in value:
        if not _DOMAIN.fullmatch(item):
            raise ValueError(f"{item!r} is not a lowercase domain name such as mail.example.com")


@dataclass(frozen=True)
class AccountsConfig:
    open_signup: bool = setting(
        False, "POST /v1/accounts open to anyone (else trusted networks or the admin token)"
    )
    trusted_networks: list[str] = setting(
        ["127.0.0.0/8", "::1/128"], "clients that may create accounts without a token", _networks
    )
    self_service_plans: list[str] = setting(
        ["free", "pro"],
        "plans an account's own key may choose; others need the admin token",
        lambda plans: _subset_of(plans, ("free", "pro", "enterprise")),
    )
    default_domain: str = setting(
        "example.com",
        "domain of a sender address created without one",
        lambda value: _domains([value]),
    )
    sending_domains: list[str] = setting(
        [], "further domains sender addresses may use (default_domain always may)", _domains
    )
    temporary_lifetime: Duration = setting(
        Duration(86400.0, "24h"),
        "lifetime of a temporary address created without expires_at",
        _at_least_a_second,
    )
    expiry_interval: Duration = setting(
        Duration(30.0, "30s"),
        "how often temporary addresses past their time turn expired",
        _at_least_a_second,
    )


PROVIDER_TYPES = ("outbox", "smtp", "mailgun", "gmail", "sendgrid")

# Keys each provider type takes beyond the common ones, with their Python type.
PROVIDER_KEYS: dict[str, dict[str, type]] = {
    "outbox": {"path": str},
    "smtp": {
        "host": str,
        "port": int,
        "tls": str,
        "username": str,
        "password": str,
        "password_file": str,
        "timeout": Duration,
        "max_connections": int,
        "ca_file": str,
        "tls_verify": bool,
    },
    "mailgun": {
        "api_key": str,
        "api_key_file": str,
        "domain": str,
        "region": str,
        "base_url": str,
        "timeout": Duration,
        "max_connections": int,
    },
    "gmail": {
        "service_account_file": str,
        "service_account_json": str,
        "base_url": str,
        "token_url": str,
        "timeout": Duration,
        "max_connections": int,
    },
    "sendgrid": {
        "api_key": str,
        "api_key_file": str,
        "base_url": str,
        "timeout": Duration,
        "max_connections": int,
    },
}
PROVIDER_COMMON_KEYS: dict[str, type] = {
    "type": str,
    "enabled": bool,
    "priority": int,
    "weight": int,
    "rate_limit": int,
    "rate_limit_per_second": int,
    "workspace_id": str,
}
SECRET_KEYS = frozenset(
    {
        "password",
        "api_key",
        "service_account_json",
        "admin_token",
        "jwt_secret",
        "secret",
        "mandrill_key",
    }
)


@dataclass(frozen=True)
class ProviderConfig:
    """One delivery provider: the common routing keys plus its type's own options."""

    id: str
    type: str
    enabled: bool = True
    priority: int = 1
    weight: int = 100
    rate_limit: int = 0
    rate_limit_per_second: int = 0
    workspace_id: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def option(self, key: str, default: Any = None) -> Any:
        """A type-specific option, reading ``<key>_file`` when the value lives in a file."""
        if key in self.options:
            return self.options[key]
        path = self.options.get(f"{key}_file")
        if path:
            return Path(path).read_text().strip()
        return default


def _default_providers() -> dict[str, ProviderConfig]:
    return {"outbox": ProviderConfig(id="outbox", type="outbox")}


@dataclass(frozen=True)
class Config:
    """The daemon's whole configuration. Build it with :func:`load_config`."""

    data_dir: str = setting(
        "./relay-data",
        "where the SQLite database, outbox, token, certificate and lock file live;"
        " under systemd the default is StateDirectory= ($STATE_DIRECTORY)",
        _non_empty,
    )
    log_level: str = setting(
        "info", "debug, info, warning or error", _choice("debug", "info", "warning", "error")
    )
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    rate_limits: RateLimitsConfig = field(default_factory=RateLimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    accounts: AccountsConfig = field(default_factory=AccountsConfig)
    providers: Mapping[str, ProviderConfig] = field(default_factory=_default_providers)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_path / 'relay.db'}"

    def source(self, key: str) -> str:
        """Where a dotted key's value came from: default, file, env, flag or runtime."""
        return self.sources.get(key, "default")


SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if dataclasses.is_dataclass(typing.get_type_hints(Config)[f.name])
}
TOP_LEVEL_KEYS = ("data_dir", "log_level")


def _describe(kind: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        bool: "true or false",
        float: "a number",
        Duration: 'a duration such as "30s"',
    }.get(kind, "a list of strings")


def _int64(value: int) -> int:
    """``value`` when a database column can hold it (settings end up in queries)."""
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"must be between {-(2**63)} and {2**63 - 1}")
    return value


def coerce(key: str, kind: Any, value: Any, from_text: bool = False) -> ConfigValue:
    """Turn a TOML or environment value into ``kind``, or raise ConfigError naming ``key``."""
    try:
        if kind is Duration:
            return Duration.parse(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            if (
                from_text
                and isinstance(value, str)
                and value.lower()
                in {
                    "1",
                    "true",
                    "yes",
                    "on",
                    "0",
                    "false",
                    "no",
                    "off",
                }
            ):
                return value.lower() in {"1", "true", "yes", "on"}
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return _int64(value)
            digits = value.strip().removeprefix("-") if isinstance(value, str) else ""
            if from_text and digits.isascii() and digits.isdigit():
                return _int64(int(value))
        elif kind is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if from_text and isinstance(value, str):
                return float(value)
        elif kind is str:
            if isinstance(value, str):
                return value
        elif typing.get_origin(kind) is list:
            if from_text and isinstance(value, str):
                return [item.strip() for item in value.split(",") if item.strip()]
            if isinstance(value, list) and all(isinstance(i, str) for i in value):
                return list(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None
    # A secret's value is never echoed, even when it is of the wrong type.
    shown = "a value" if key.rpartition(".")[2] in SECRET_KEYS else repr(value)
    raise ConfigError(key, f"expected {_describe(kind)}, got {shown}")


def _field_kinds(section: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section)
    return {f.name: hints[f.name] for f in dataclasses.fields(section)}


def _check(key: str, section: type, name: str, value: Any) -> None:
    for f in dataclasses.fields(section):
        if f.name == name and f.metadata.get("check"):
            try:
                f.metadata["check"](value)
            except ValueError as exc:
                raise ConfigError(key, str(exc)) from None


def describe_settings() -> dict[str, str]:
    """Every dotted key the daemon knows (providers excluded), with its description."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(Config):
        if f.name in TOP_LEVEL_KEYS:
            out[f.name] = f.metadata["doc"]
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            out[f"{name}.{f.name}"] = f.metadata["doc"]
    return out


Layer = dict[str, Any]


def _merge(
    target: dict[str, Any], layer: Mapping[str, Any], origin: str, sources: dict[str, str]
) -> None:
    for key, value in layer.items():
        if key == "providers":
            if not isinstance(value, Mapping):
                raise ConfigError("providers", "must be a table of provider tables")
            providers = target.setdefault("providers", {})
            for pid, options in value.items():
                if not isinstance(options, Mapping):
                    raise ConfigError(f"providers.{pid}", "must be a table of settings")
                providers.setdefault(pid, {}).update(options)
                for okey in options:
                    sources[f"providers.{pid}.{okey}"] = origin
        elif key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(key, "must be a table of settings")
            target.setdefault(key, {}).update(value)
            for skey in value:
                sources[f"{key}.{skey}"] = origin
        else:
            target[key] = value
            sources[key] = origin


def env_layer(env: Mapping[str, str], provider_ids: typing.Iterable[str] = ()) -> Layer:
    """Map ``RELAY_<SECTION>_<KEY>`` variables onto config keys (values stay text)."""
    layer: Layer = {}
    if env.get("RELAY_ADMIN_TOKEN"):
        layer.setdefault("auth", {})["admin_token"] = env["RELAY_ADMIN_TOKEN"]
    for key in TOP_LEVEL_KEYS:
        name = f"RELAY_{key.upper()}"
        if name in env:
            layer[key] = env[name]
    for section, kind in SECTIONS.items():
        fields = _field_kinds(kind)
        for fname in fields:
            name = f"RELAY_{section.upper()}_{fname.upper()}"
            if name in env:
                layer.setdefault(section, {})[fname] = env[name]
        # A misspelt variable would otherwise be ignored without a word (a security
        # setting such as RELAY_SMTP_REQUIRE_AUTH silently left at its default).
        prefix = f"RELAY_{section.upper()}_"
        for name in env:
            if name.startswith(prefix) and name[len(prefix) :].lower() not in fields:
                suggestion = _did_you_mean(name, [f"{prefix}{f.upper()}" for f in fields])
                raise ConfigError(name, f"unknown setting in [{section}]{suggestion}")
    known = {
        **PROVIDER_COMMON_KEYS,
        **{k: v for keys in PROVIDER_KEYS.values() for k, v in keys.items()},
    }
    for pid in provider_ids:
        prefix = f"RELAY_PROVIDERS_{pid.upper().replace('-', '_')}_"
        for name, value in env.items():
            if name.startswith(prefix) and name[len(prefix) :].lower() in known:
                layer.setdefault("providers", {}).setdefault(pid, {})[
                    name[len(prefix) :].lower()
                ] = value
    return layer


def read_toml(path: Path) -> Layer:
    """Read a TOML config file, turning any failure into a one-line ConfigError."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("--config", f"file {str(path)!r} does not exist") from None
    except PermissionError:
        raise ConfigError("--config", f"cannot read {str(path)!r}: permission denied") from None
    except IsADirectoryError:
        raise ConfigError("--config", f"{str(path)!r} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            "--config", f"{path} is not valid TOML: not UTF-8 text (line {line})"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None


def _build_provider(pid: str, raw: Mapping[str, Any], from_text: set[str]) -> ProviderConfig:
    ptype = raw.get("type")
    if ptype is None and pid in PROVIDER_TYPES:
        ptype = pid
    if ptype not in PROVIDER_TYPES:
        raise ConfigError(f"providers.{pid}.type", f"must be one of {', '.join(PROVIDER_TYPES)}")
    common: dict[str, Any] = {}
    options: dict[str, Any] = {}
    allowed = PROVIDER_KEYS[ptype]
    for key, value in raw.items():
        dotted = f"providers.{pid}.{key}"
        textual = dotted in from_text
        if key == "type":
            continue
        if key in PROVIDER_COMMON_KEYS:
            common[key] = coerce(dotted, PROVIDER_COMMON_KEYS[key], value, textual)
        elif key in allowed:
            options[key] = coerce(dotted, allowed[key], value, textual)
        else:
            known = [*PROVIDER_COMMON_KEYS, *allowed]
            raise ConfigError(
                dotted, f"unknown setting for a {ptype} provider{_did_you_mean(key, known)}"
            )
    for key in ("priority", "weight", "rate_limit", "rate_limit_per_second"):
        if common.get(key, 0) < 0:
            raise ConfigError(f"providers.{pid}.{key}", "cannot be negative")
    if ptype == "smtp":
        if not options.get("host"):
            raise ConfigError(f"providers.{pid}.host", "an smtp provider needs a host")
        if "port" in options:
            try:
                _port(options["port"])
            except ValueError as exc:
                raise ConfigError(f"providers.{pid}.port", str(exc)) from None
        tls = options.get("tls", "none")
        if tls not in ("none", "starttls", "implicit"):
            raise ConfigError(f"providers.{pid}.tls", "must be 'none', 'starttls' or 'implicit'")
    if ptype == "mailgun" and options.get("region", "US").upper() not in ("US", "EU"):
        raise ConfigError(f"providers.{pid}.region", "must be 'US' or 'EU'")
    for key, value in options.items():
        if key.endswith("_file") and value:
            try:
                _readable_file(value)
            except ValueError as exc:
                raise ConfigError(f"providers.{pid}.{key}", str(exc)) from None
    return ProviderConfig(id=pid, type=ptype, options=types.MappingProxyType(options), **common)


def build_config(layers: typing.Sequence[tuple[str, Layer]]) -> Config:
    """Merge ``(origin, layer)`` pairs in order and validate every key."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for origin, layer in layers:
        _merge(merged, layer, origin, sources)
    textual = {key for key, origin in sources.items() if origin in ("env", "flag")}

    kwargs: dict[str, Any] = {}
    top_kinds = _field_kinds(Config)
    for key, value in merged.items():
        if key in TOP_LEVEL_KEYS:
            kwargs[key] = coerce(key, top_kinds[key], value, key in textual)
            _check(key, Config, key, kwargs[key])
        elif key in SECTIONS:
            section = SECTIONS[key]
            kinds = _field_kinds(section)
            values: dict[str, Any] = {}
            for name, raw in value.items():
                dotted = f"{key}.{name}"
                if name not in kinds:
                    raise ConfigError(
                        dotted, f"unknown setting in [{key}]{_did_you_mean(name, kinds)}"
                    )
                values[name] = coerce(dotted, kinds[name], raw, dotted in textual)
                _check(dotted, section, name, values[name])
            kwargs[key] = section(**values)
        elif key == "providers":
            providers = {pid: _build_provider(pid, raw, textual) for pid, raw in value.items()}
            if not providers:
                providers = _default_providers()
            kwargs["providers"] = types.MappingProxyType(providers)
        else:
            known = [*TOP_LEVEL_KEYS, *SECTIONS, "providers"]
            raise ConfigError(key, f"unknown setting or section{_did_you_mean(key, known)}")
    smtp: SmtpConfig = kwargs.get("smtp", SmtpConfig())
    if bool(smtp.tls_cert) != bool(smtp.tls_key):
        raise ConfigError(
            "smtp.tls_key" if smtp.tls_cert else "smtp.tls_cert",
            "tls_cert and tls_key must be set together",
        )
    return Config(**kwargs, sources=types.MappingProxyType(sources))


@functools.cache
def machine_fqdn() -> str:
    """The machine's fully qualified name: a DNS lookup, made once per process."""
    return socket.getfqdn() or "localhost"


def relay_hostname(config: Config) -> str:
    """The relay's own name (greeting, Message-IDs, DSNs, certificate): ``smtp.hostname``,
    else the machine's FQDN."""
    return config.smtp.hostname or machine_fqdn()


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Layer | None = None,
    runtime: Layer | None = None,
) -> Config:
    """Build the Config: defaults < TOML file < environment < flags < runtime changes.

    Under systemd, ``StateDirectory=`` (``$STATE_DIRECTORY``) replaces the default
    data_dir, below the file: the unit needs no RELAY_DATA_DIR, which would override
    the ``data_dir`` of the file it names with --config.
    """
    env = os.environ if env is None else env
    file_layer = read_toml(path) if path is not None else {}
    provider_ids = [
        pid
        for layer in (file_layer, runtime or {})
        if isinstance(layer.get("providers"), Mapping)
        for pid in layer["providers"]
    ]
    layers: list[tuple[str, Layer]] = [("file", file_layer), ("env", env_layer(env, provider_ids))]
    state_directory = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state_directory:
        layers.insert(0, ("env", {"data_dir": state_directory}))
    if flags:
        layers.append(("flag", flags))
    if runtime:
        layers.append(("runtime", runtime))
    return build_config(layers)


def parse_assignment(text: str) -> Layer:
    """Turn ``section.key=value`` (a ``--set`` flag) into a layer."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(part.strip() for part in parts):
        raise ConfigError(text, "expected section.key=value")
    layer: Layer = {}
    node = layer
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return layer


def as_dict(config: Config, mask_secrets: bool = True) -> dict[str, Any]:
    """The configuration as plain JSON-able data, secrets masked."""

    def render(key: str, value: Any) -> Any:
        if mask_secrets and key in SECRET_KEYS and value:
            return "********"
        if isinstance(value, Duration):
            return value.text
        return value

    out: dict[str, Any] = {key: getattr(config, key) for key in TOP_LEVEL_KEYS}
    for name in SECTIONS:
        section = getattr(config, name)
        out[name] = {
            f.name: render(f.name, getattr(section, f.name)) for f in dataclasses.fields(section)
        }
    out["providers"] = {
        pid: {
            "type": p.type,
            "enabled": p.enabled,
            "priority": p.priority,
            "weight": p.weight,
            "rate_limit": p.rate_limit,
            "rate_limit_per_second": p.rate_limit_per_second,
            "workspace_id": p.workspace_id or None,
            **{k: render(k, v) for k, v in p.options.items()},
        }
        for pid, p in config.providers.items()
    }
    return out


Source = Literal["default", "file", "env", "flag", "runtime"]
