"""The shipped systemd units, run as systemd would run them: relayd.service honours the
data_dir of the config file it names, and without one keeps its state in StateDirectory=
(/var/lib/relay); relayctl-cleanup.service looks for the admin token where relayd keeps it."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

import daemon
from tests.e2e.conftest import BIN

pytestmark = pytest.mark.e2e

UNITS = Path(daemon.__file__).parent / "systemd"


def service_settings(unit: Path) -> dict[str, list[str]]:
    """The ``[Service]`` assignments of a unit file, every value of each key in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def service_environment(unit: Path, root: Path) -> tuple[dict[str, str], Path]:
    """The environment and working directory systemd gives the service, with /var/lib
    moved under ``root`` (Environment=, and StateDirectory= as $STATE_DIRECTORY)."""

    def moved(value: str) -> str:
        return value.replace("/var/lib/", f"{root}/var/lib/")

    settings = service_settings(unit)
    env = {"PATH": "/usr/bin:/bin"}
    for value in settings.get("Environment", []):
        for assignment in shlex.split(value):
            name, _, text = assignment.partition("=")
            env[name] = moved(text)
    states = [name for value in settings.get("StateDirectory", []) for name in value.split()]
    if states:
        env["STATE_DIRECTORY"] = ":".join(f"{root}/var/lib/{name}" for name in states)
    cwd = Path(moved(settings.get("WorkingDirectory", ["/"])[-1]))
    return env, cwd


def check_config(unit: Path, root: Path, toml: str) -> None:
    """``relayd check-config`` (which makes data_dir and its certificate) as the unit runs it."""
    env, cwd = service_environment(unit, root)
    cwd.mkdir(parents=True, exist_ok=True)
    config = root / "relayd.toml"
    config.write_text(toml)
    result = subprocess.run(
        [str(BIN / "relayd"), "check-config", "--config", str(config)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr


def test_relayd_service_honours_the_data_dir_of_its_config_file(tmp_path: Path) -> None:
    unit = UNITS / "relayd.service"
    check_config(unit, tmp_path, f'data_dir = "{tmp_path / "srv"}"\n')
    assert (tmp_path / "srv" / "tls" / "relay.crt").is_file()
    assert not (tmp_path / "var" / "lib" / "relay" / "tls").exists()


def test_relayd_service_keeps_its_state_in_var_lib_relay_by_default(tmp_path: Path) -> None:
    unit = UNITS / "relayd.service"
    check_config(unit, tmp_path, "[smtp]\nport = 2525\n")
    state = tmp_path / "var" / "lib" / "relay"
    assert (state / "tls" / "relay.crt").is_file()
    assert not (state / "relay-data").exists()


def test_cleanup_finds_the_token_where_relayd_keeps_it(tmp_path: Path) -> None:
    relayd_env, _ = service_environment(UNITS / "relayd.service", tmp_path)
    cleanup_env, _ = service_environment(UNITS / "relayctl-cleanup.service", tmp_path)
    assert "RELAY_DATA_DIR" not in relayd_env
    assert cleanup_env["RELAY_DATA_DIR"] == relayd_env["STATE_DIRECTORY"].split(":")[0]
    assert service_settings(UNITS / "relayd.service")["ExecStart"][0].split()[1:] == [
        "--config",
        "/etc/relay/relayd.toml",
    ]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("name", ["relayd.service", "relayctl-cleanup.service"])
def test_units_pass_systemd_analyze_verify(tmp_path: Path, name: str) -> None:
    """Syntax and directives, with ExecStart pointed at the relayd/relayctl installed here."""
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/opt/relay/.venv/bin/", f"{BIN}/")
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if name in line or "relayd" in line or "relayctl" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
