"""Named connection profiles in ``$XDG_CONFIG_HOME/relayctl/config.toml`` (mode 0600).

The file, as written by ``relayctl profile add``::

    current = "prod"

    [profiles.prod]
    url = "https://relay.example.com"
    token = "rly_admin_..."
    workspace = "ws-001"

It holds tokens, so it is written atomically and readable by its owner only.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

FIELDS = ("url", "token", "workspace")


class ProfileError(Exception):
    """The profile file is unusable or a profile does not exist."""


class ProfileFileError(ProfileError):
    """The profile file cannot be read or written, or is not a valid profile file."""


class ProfileNotFoundError(ProfileError):
    """No profile of that name."""


@dataclass(frozen=True)
class Profile:
    """Where and as whom relayctl connects."""

    name: str
    url: str | None = None
    token: str | None = None
    workspace: str | None = None


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/relayctl/config.toml``, else ``~/.config/relayctl/config.toml``."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "relayctl" / "config.toml"


class ProfileStore:
    """Reads and writes the profile file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or config_path()

    def load(self) -> dict[str, Any]:
        """The whole document (empty when the file does not exist)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ProfileFileError(f"cannot read {self.path}: {_reason(exc)}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProfileFileError(
                f"cannot read {self.path}: not UTF-8 text (byte {exc.start})"
            ) from None
        try:
            document = tomllib.loads(text)
        except (ValueError, RecursionError) as exc:  # TOMLDecodeError, a 5000-digit integer...
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise ProfileFileError(f"cannot read {self.path}: invalid TOML: {reason}") from None
        if not isinstance(document.get("profiles", {}), dict):
            raise ProfileFileError(f"{self.path}: [profiles] must be a table")
        return document

    def save(self, document: Mapping[str, Any]) -> None:
        """Write atomically with mode 0600 (the file holds tokens); ProfileFileError if not."""
        temp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                tomli_w.dump(dict(document), fh)
            os.chmod(temp, 0o600)
            os.replace(temp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise ProfileFileError(f"cannot write {self.path}: {_reason(exc)}") from None

    def profiles(self) -> dict[str, Profile]:
        """Every stored profile by name; a field that is not a string is a ProfileError."""
        raw = self.load().get("profiles", {})
        found: dict[str, Profile] = {}
        for name, fields in raw.items():
            if not isinstance(fields, dict):
                continue
            for key in FIELDS:
                if not isinstance(fields.get(key, ""), str):
                    raise ProfileFileError(f"{self.path}: profiles.{name}.{key} must be a string")
            found[name] = Profile(name, **{k: v for k, v in fields.items() if k in FIELDS})
        return found

    def current(self) -> str | None:
        """The profile ``relayctl profile use`` selected."""
        value = self.load().get("current")
        return value if isinstance(value, str) else None

    def get(self, name: str) -> Profile:
        """One profile; ProfileNotFoundError when absent."""
        found = self.profiles().get(name)
        if found is None:
            raise ProfileNotFoundError(
                f"no profile {name!r} in {self.path} (see: relayctl profile ls)"
            )
        return found

    def add(self, profile: Profile, make_current: bool = False) -> None:
        """Create or replace a profile."""
        document = self.load()
        fields = {k: getattr(profile, k) for k in FIELDS if getattr(profile, k)}
        document.setdefault("profiles", {})[profile.name] = fields
        if make_current or not document.get("current"):
            document["current"] = profile.name
        self.save(document)

    def use(self, name: str) -> None:
        """Select the profile used when ``--profile`` is not given."""
        self.get(name)
        document = self.load()
        document["current"] = name
        self.save(document)

    def remove(self, name: str) -> None:
        """Delete a profile (and the selection when it was the current one)."""
        self.get(name)
        document = self.load()
        del document["profiles"][name]
        if document.get("current") == name:
            document.pop("current")
        self.save(document)


def _reason(exc: OSError) -> str:
    """An OSError's reason without the path the message names already."""
    return exc.strerror or str(exc)
