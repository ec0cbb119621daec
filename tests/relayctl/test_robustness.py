"""The real entry point (``relayctl`` as installed, in a subprocess) and its streams: a full
disk, a closed pipe, an encoding that cannot carry the text, a terminal or not, --version."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from relayctl import __version__
from tests.relayctl.conftest import Cli, run

# What the console script runs (the checkout's relayctl, whatever is installed).
ENTRY = "from relayctl.main import main; main()"
DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full")
BUFFERING = pytest.mark.parametrize("unbuffered", [True, False], ids=["unbuffered", "buffered"])


def relayctl(
    *args: str, env: dict[str, str] | None = None, unbuffered: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[bytes]:
    """relayctl's entry point in a child process with this test's environment."""
    environ = {**os.environ, **(env or {})}
    environ.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        environ["PYTHONUNBUFFERED"] = "1"
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-c", ENTRY, *args],
        env=environ,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
        **kwargs,
    )


def to_dev_full(*args: str, unbuffered: bool = True) -> subprocess.CompletedProcess[bytes]:
    with DEV_FULL.open("wb") as full:
        return relayctl(*args, stdout=full, unbuffered=unbuffered)


def to_closed_pipe(*args: str, unbuffered: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run with stdout a pipe nobody reads any more (the reader closed it first)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return relayctl(*args, stdout=write_end, unbuffered=unbuffered)
    finally:
        os.close(write_end)


def add_profiles(count: int) -> None:
    """``count`` profiles, written the way ``profile add`` writes them."""
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "relayctl" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    profiles = {f"p{n}": {"url": f"http://relay-{n}.example:8080"} for n in range(count)}
    path.write_text(tomli_w.dumps({"current": "p0", "profiles": profiles}))


# -- a failed write of the output ----------------------------------------------------------


@needs_dev_full
@BUFFERING
def test_output_to_a_full_disk_is_one_line_and_exit_1(unbuffered: bool) -> None:
    add_profiles(3)
    for args in (["profile", "ls"], ["--json", "profile", "ls"], ["--version"], ["--help"]):
        result = to_dev_full(*args, unbuffered=unbuffered)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr == b"relayctl: cannot write output: No space left on device\n"


@needs_dev_full
async def test_queue_ls_to_a_full_disk(cli: Cli) -> None:
    sent = await cli("send", "--from", "a@example.com", "--to", "b@example.org", "--text", "x")
    assert sent.exit_code == 0, sent.output
    result = await asyncio.to_thread(
        to_dev_full, "--url", cli.url, "--token", str(cli.token), "queue", "ls"
    )
    assert result.returncode == 1
    assert result.stderr == b"relayctl: cannot write output: No space left on device\n"


@BUFFERING
@pytest.mark.parametrize("count", [1, 2000], ids=["small", "big"])
def test_closed_pipe_exits_141_quietly(unbuffered: bool, count: int) -> None:
    add_profiles(count)
    for args in (["profile", "ls"], ["--json", "profile", "ls"], ["--help"]):
        result = to_closed_pipe(*args, unbuffered=unbuffered)
        assert (result.returncode, result.stderr) == (141, b""), args


def test_closed_pipe_is_documented() -> None:
    assert "141  output closed early by the reader" in run(["--help"]).stdout


# -- text stdout's encoding cannot carry -------------------------------------------------


def test_ascii_stdout_escapes_instead_of_crashing() -> None:
    assert run(["profile", "add", "café", "--url", "http://relay.example:8080"]).exit_code == 0
    ascii_env = {"PYTHONIOENCODING": "ascii"}
    listed = relayctl("profile", "ls", env=ascii_env)
    assert listed.returncode == 0, listed.stderr
    assert b"caf\\xe9" in listed.stdout
    as_json = relayctl("--json", "profile", "ls", env=ascii_env)
    assert as_json.returncode == 0, as_json.stderr
    assert as_json.stdout.isascii()
    assert "café" in json.loads(as_json.stdout)["profiles"]  # escaped, still the same JSON
    missing = relayctl("profile", "use", "nöpe", env=ascii_env)
    assert missing.returncode == 3
    assert missing.stderr.startswith(b"relayctl: no profile 'n\\xf6pe' in ")


async def test_ascii_stdout_shows_a_non_ascii_subject(cli: Cli) -> None:
    sent = await cli(
        "send", "--from", "a@example.com", "--to", "b@example.org", "--subject", "Résumé",
        "--text", "x",
    )  # fmt: skip
    assert sent.exit_code == 0, sent.output
    message_id = sent.stdout.strip()
    ascii_env = {"PYTHONIOENCODING": "ascii"}
    base = ("--url", cli.url, "--token", str(cli.token))
    listed = await asyncio.to_thread(relayctl, *base, "queue", "ls", env=ascii_env)
    assert listed.returncode == 0, listed.stderr
    assert b"R\\xe9sum\\xe9" in listed.stdout
    shown = await asyncio.to_thread(
        relayctl, *base, "--json", "queue", "show", message_id, env=ascii_env
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["subject"] == "Résumé"


# -- usage errors: a panel on a terminal, plain lines elsewhere ------------------------------


def test_usage_error_off_a_terminal_is_plain_text() -> None:
    result = relayctl("queue", "ls", "--limit", "x")
    assert result.returncode == 2
    assert result.stderr.startswith(b"Usage: relayctl queue ls [OPTIONS]\n")
    assert b"Error: Invalid value for '--limit'" in result.stderr
    assert "╭".encode() not in result.stderr
    # The same in-process (Typer's test runner has no terminal either).
    assert "╭" not in run(["queue", "ls", "--limit", "x"]).stderr
    unknown = relayctl("--nope")
    assert unknown.returncode == 2
    assert b"Error: No such option: --nope" in unknown.stderr


def test_usage_error_on_a_terminal_keeps_the_panel() -> None:
    main_fd, tty_fd = pty.openpty()
    try:
        result = relayctl("queue", "ls", "--limit", "x", stderr=tty_fd)
    finally:
        os.close(tty_fd)
    shown = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError as exc:  # EIO: the terminal's other side is closed, all read
            assert exc.errno == errno.EIO
            break
        if not chunk:
            break
        shown += chunk
    os.close(main_fd)
    assert result.returncode == 2
    assert "╭─".encode() in shown and b" Error " in shown
    assert b"Invalid value for" in shown


# -- --version -----------------------------------------------------------------------------


def test_version_flag_prints_the_client_version_without_a_daemon(closed_port: int) -> None:
    for args in (["--version"], ["--url", f"http://127.0.0.1:{closed_port}", "--version"]):
        result = run(args)
        assert result.exit_code == 0, result.output
        assert result.stdout == f"relayctl {__version__}\n"
        assert result.stderr == ""
    installed = relayctl("--version")
    assert (installed.returncode, installed.stdout) == (0, f"relayctl {__version__}\n".encode())
