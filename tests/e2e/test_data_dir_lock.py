"""One relayd per data_dir: a second one (other ports, same data_dir) refuses in one line
naming the running one's pid; check-config still works beside it, migrate refuses; a
kill -9'd daemon leaves nothing that blocks its restart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, relayd

pytestmark = pytest.mark.e2e


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_second_relayd_on_one_data_dir_refuses(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    first = daemon_factory(tmp_path)
    first.start()
    assert first.proc is not None
    data_dir = tmp_path / "data"
    # Another config (other ports, so only the data_dir is shared), as a second unit or a
    # hand-started relayd would have.
    (tmp_path / "second").mkdir()
    second = daemon_factory(tmp_path / "second")
    text = second.config_path.read_text()
    second.config_path.write_text(text.replace(str(second.workdir / "data"), str(data_dir)))

    refused = relayd("--config", str(second.config_path), cwd=second.workdir)
    assert refused.returncode == 1
    assert one_line(refused) == (
        f"relayd: cannot start: data_dir {str(data_dir)!r} is in use by another relayd"
        f" (pid {first.proc.pid}); stop it first, or give this one its own data_dir"
    )

    checked = relayd("check-config", "--config", str(first.config_path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr

    migrate = relayd("migrate", "--config", str(first.config_path), cwd=tmp_path)
    assert migrate.returncode == 1
    assert one_line(migrate) == (
        f"relayd: migration refused: data_dir {str(data_dir)!r} is in use by another relayd"
        f" (pid {first.proc.pid}); stop it first"
    )
    assert first.proc.poll() is None  # the running one never noticed

    # kill -9: no shutdown code runs, the lock file stays, yet it blocks nothing.
    first.kill9()
    assert (data_dir / "relayd.lock").exists()
    first.start()
    assert first.relayctl("version").returncode == 0
    assert first.terminate() == 0
    # Stopped cleanly: the other config may now have the data_dir (and migrate too).
    migrated = relayd("migrate", "--config", str(second.config_path), cwd=second.workdir)
    assert migrated.returncode == 0, migrated.stderr
    second.start()
    assert second.terminate() == 0
    assert "Traceback" not in first.log.read_text() + second.log.read_text()
