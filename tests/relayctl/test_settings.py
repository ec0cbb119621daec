"""Token and URL discovery: explicit, environment, then the admin token file relayd wrote."""

from __future__ import annotations

from pathlib import Path

from relayctl.settings import DEFAULT_URL, resolve_token, resolve_url


def test_url_precedence() -> None:
    assert resolve_url(None, {}) == DEFAULT_URL
    assert resolve_url(None, {"RELAY_URL": "http://relay:9000/"}) == "http://relay:9000"
    assert resolve_url("http://x:1", {"RELAY_URL": "http://relay:9000"}) == "http://x:1"


def test_token_precedence(tmp_path: Path) -> None:
    data = tmp_path / "custom"
    data.mkdir()
    (data / "admin.token").write_text("from-data-dir\n")
    default = tmp_path / "relay-data"
    default.mkdir()
    (default / "admin.token").write_text("from-default\n")
    env = {"RELAY_DATA_DIR": str(data)}
    assert resolve_token("explicit", {"RELAY_TOKEN": "env"}, tmp_path) == "explicit"
    assert resolve_token(None, {"RELAY_TOKEN": " env \n", **env}, tmp_path) == "env"
    assert resolve_token(None, env, tmp_path) == "from-data-dir"
    assert resolve_token(None, {"RELAY_DATA_DIR": "custom"}, tmp_path) == "from-data-dir"
    assert resolve_token(None, {}, tmp_path) == "from-default"


def test_missing_empty_or_unreadable_token_files_are_skipped(tmp_path: Path) -> None:
    assert resolve_token(None, {}, tmp_path) is None
    (tmp_path / "relay-data").mkdir()
    (tmp_path / "relay-data" / "admin.token").write_text("  \n")
    assert resolve_token(None, {}, tmp_path) is None
    # A directory where the file should be cannot be read: skipped, not a crash.
    assert resolve_token(None, {"RELAY_DATA_DIR": str(tmp_path)}, tmp_path / "relay-data") is None
