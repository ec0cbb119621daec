"""relayd on SQLite under SMTP and API load while the disk holding the database fills up
and is freed again (a small tmpfs of its own: needs root to mount). The full disk is
answered 452 4.3.1 / DATABASE_ERROR and /health says so; nothing acknowledged is lost or
delivered twice; ingest resumes by itself once there is room."""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon
from tests.e2e.test_resilience_postgres import (
    Load,
    SubjectSink,
    all_sent,
    own_log_lines,
    running_sink,
    sink_provider,
    wait_delivered,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def sink() -> Iterator[tuple[SubjectSink, int]]:
    yield from running_sink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted for the test (root only), unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the disk is full."""
    chunk = b"\0" * (256 * 1024)
    with path.open("wb", buffering=0) as filler:
        with contextlib.suppress(OSError):
            while True:
                filler.write(chunk)
        try:
            while True:
                filler.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_a_full_disk_under_load_is_refused_then_recovered_without_a_restart(
    daemon_factory: type[Daemon],
    tmp_path: Path,
    small_disk: Path,
    sink: tuple[SubjectSink, int],
) -> None:
    handler, sink_port = sink
    database = f"sqlite:///{small_disk / 'relay.db'}"
    daemon = daemon_factory(
        tmp_path, f'[database]\nurl = "{database}"\n' + sink_provider(sink_port)
    )
    daemon.start()
    filler = small_disk / "filler"
    with Load(daemon) as load:
        time.sleep(1.0)
        load.phase = "full"
        fill(filler)
        time.sleep(1.5)
        health = httpx.get(f"{daemon.url}/health", timeout=10)
        time.sleep(1.0)
        filler.unlink()
        freed = time.monotonic()
        load.phase = "after"
        time.sleep(2.0)
    assert health.status_code == 503, health.text  # monitoring sees mail refused
    assert health.json()["database"] == "unavailable"
    assert load.first_ack_after(freed) < 3.0, "ingest did not resume within 3s"
    full = load.phase_replies("full")
    assert set(full) <= {
        "smtp data 250",  # the first moments: room left in pages SQLite had already
        "api 202",
        "smtp data 452 4.3.1",
        "api 500 DATABASE_ERROR",
    }, full
    assert full.get("smtp data 452 4.3.1", 0) > 0 and full.get("api 500 DATABASE_ERROR", 0) > 0

    wait_delivered(handler, load.acked)
    assert all_sent(database) == {"sent"}  # nothing stuck in processing
    time.sleep(1.0)
    duplicates = [seq for seq, n in collections.Counter(handler.received()).items() if n > 1]
    assert not duplicates, f"delivered twice: {duplicates}"
    assert httpx.get(f"{daemon.url}/health", timeout=10).status_code == 200
    assert daemon.terminate() == 0

    log = daemon.log.read_text()
    assert "raised an exception" not in log  # APScheduler's traceback for a job
    lines = own_log_lines(log)
    assert not [line for line in lines if "could not record" in line], lines
    assert len(lines) <= 30, "\n".join(lines)
