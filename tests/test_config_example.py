"""config.example.toml documents every setting the daemon knows, and loads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from daemon.config import PROVIDER_COMMON_KEYS, PROVIDER_KEYS, build_config, describe_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def _flatten(data: dict[str, object], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        if key == "providers":
            continue
        if isinstance(value, dict):
            keys |= _flatten(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_every_setting_is_in_the_example_and_nothing_else() -> None:
    documented = _flatten(tomllib.loads(EXAMPLE.read_text()))
    known = set(describe_settings())
    assert documented - known == set(), "example has settings the daemon does not know"
    assert known - documented == set(), "settings missing from config.example.toml"


def test_every_provider_key_is_documented() -> None:
    text = EXAMPLE.read_text()
    mentioned = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.MULTILINE))
    mentioned |= set(re.findall(r"^#\s+([a-z_]+)\s{2,}", text, re.MULTILINE))
    for ptype, keys in PROVIDER_KEYS.items():
        missing = (set(keys) | set(PROVIDER_COMMON_KEYS)) - mentioned
        assert not missing, f"{ptype} provider keys not documented: {missing}"


def test_example_loads_as_a_config() -> None:
    config = build_config([("file", tomllib.loads(EXAMPLE.read_text()))])
    assert config.smtp.port == 2525
    assert "outbox" in config.providers
