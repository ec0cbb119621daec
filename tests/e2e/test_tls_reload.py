"""SIGHUP reloads the SMTP certificate at the same paths (certbot renewing in place, then
``systemctl reload relayd``): new handshakes on both ports get the new certificate, in the
daemon's own listeners and in its SMTP worker processes; a bad new pair changes nothing."""

from __future__ import annotations

import hashlib
import shutil
import signal
import smtplib
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from daemon.tls import generate_self_signed
from tests.e2e.conftest import Daemon
from tests.test_tls import write_encrypted_pair

pytestmark = pytest.mark.e2e


def pem_fingerprint(cert: Path) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    return hashlib.sha256(der).hexdigest()


def served(port: int, starttls: bool) -> str:
    """The SHA-256 of the certificate a fresh TLS client sees on ``port``."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    smtp: smtplib.SMTP
    if starttls:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
        smtp.starttls(context=context)
    else:
        smtp = smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=context)
    with smtp:
        assert isinstance(smtp.sock, ssl.SSLSocket)
        der = smtp.sock.getpeercert(binary_form=True)
        assert der is not None
        assert smtp.noop()[0] == 250
    return hashlib.sha256(der).hexdigest()


def served_everywhere(daemon: Daemon, expected: str, timeout: float = 30.0) -> None:
    """Until 12 handshakes in a row on each port show ``expected`` (with several worker
    processes, SO_REUSEPORT spreads the connections over all of them)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {
            served(port, port == daemon.smtp_port)
            for port in (daemon.smtp_port, daemon.tls_port)
            for _ in range(12)
        }
        if seen == {expected}:
            return
        time.sleep(0.1)
    raise AssertionError(f"served {seen}, expected only {expected}")


def hup(daemon: Daemon, expect: str) -> list[str]:
    """Send SIGHUP and return the log lines it produced, once one of them holds ``expect``."""
    assert daemon.proc is not None
    size = daemon.log.stat().st_size
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = daemon.log.read_bytes()[size:].decode()
        if expect in new:
            time.sleep(0.3)  # a second line would have come by now
            return daemon.log.read_bytes()[size:].decode().strip().splitlines()
        time.sleep(0.05)
    raise AssertionError(f"no {expect!r} in the log after SIGHUP:\n{daemon.log.read_text()}")


def replace_in_place(source_cert: Path, source_key: Path, cert: Path, key: Path) -> None:
    """Overwrite the served files' contents (same paths, same inodes), as an editor would."""
    shutil.copyfile(source_key, key)
    shutil.copyfile(source_cert, cert)


@pytest.mark.parametrize("workers", [0, 2])
def test_sighup_serves_a_certificate_replaced_in_place(
    daemon_factory: type[Daemon], tmp_path: Path, workers: int
) -> None:
    now = datetime.now(UTC)
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    generate_self_signed(cert, key, "relay.test", now)
    generate_self_signed(tmp_path / "new.crt", tmp_path / "new.key", "relay.test", now)
    daemon = daemon_factory(tmp_path)
    text = daemon.config_path.read_text().replace(
        "[smtp]\n", f'[smtp]\ntls_cert = "{cert}"\ntls_key = "{key}"\nworkers = {workers}\n'
    )
    daemon.config_path.write_text(text)
    daemon.start()
    old = pem_fingerprint(cert)
    served_everywhere(daemon, old)

    replace_in_place(tmp_path / "new.crt", tmp_path / "new.key", cert, key)
    new = pem_fingerprint(cert)
    assert new != old
    lines = hup(daemon, "configuration reloaded")
    assert len(lines) == 1, lines
    assert f"serving the new TLS certificate {cert} (sha256 {new[:16]}" in lines[0]
    served_everywhere(daemon, new)

    # A key that does not match, then an encrypted key: one line each, the listeners
    # stay up and keep the pair in service.
    generate_self_signed(tmp_path / "other.crt", tmp_path / "other.key", "relay.test", now)
    shutil.copyfile(tmp_path / "other.key", key)
    lines = hup(daemon, "reload refused")
    assert len(lines) == 1, lines
    assert "keeping the running configuration: smtp.tls_cert: cannot load certificate" in lines[0]
    served_everywhere(daemon, new, timeout=5)

    write_encrypted_pair(tmp_path, now)
    replace_in_place(tmp_path / "c.pem", tmp_path / "k.pem", cert, key)
    lines = hup(daemon, "reload refused")
    assert len(lines) == 1, lines
    assert "smtp.tls_key: the private key is encrypted" in lines[0]
    served_everywhere(daemon, new, timeout=5)

    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.log.read_text()


def test_sighup_serves_a_self_signed_pair_replaced_in_data_dir(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(tmp_path)
    daemon.start()  # smtp.workers left at its default (one worker process)
    cert, key = tmp_path / "data" / "tls" / "relay.crt", tmp_path / "data" / "tls" / "relay.key"
    old = pem_fingerprint(cert)
    served_everywhere(daemon, old)

    generate_self_signed(cert, key, "relay.test", datetime.now(UTC))
    new = pem_fingerprint(cert)
    assert new != old
    lines = hup(daemon, "configuration reloaded")
    assert "serving the new TLS certificate" in lines[0] and len(lines) == 1, lines
    served_everywhere(daemon, new)

    # Nothing new: nothing said about the certificate, and it stays.
    lines = hup(daemon, "configuration reloaded")
    assert lines == [lines[0]] and "TLS" not in lines[0], lines
    served_everywhere(daemon, new, timeout=5)
    assert daemon.terminate() == 0


@pytest.mark.parametrize("workers", [0, 1])
def test_a_tls_pair_set_through_the_admin_api_is_served_at_once(
    daemon_factory: type[Daemon], tmp_path: Path, workers: int
) -> None:
    """PUT /api/admin/config took new ``smtp.tls_cert``/``tls_key`` paths but said
    "restart required" for them, though SIGHUP applies them: now the PUT serves the
    new pair at once, and refuses (400, nothing stored) a pair that does not load."""
    now = datetime.now(UTC)
    generate_self_signed(tmp_path / "new.crt", tmp_path / "new.key", "relay.test", now)
    generate_self_signed(tmp_path / "other.crt", tmp_path / "other.key", "relay.test", now)
    daemon = daemon_factory(tmp_path)
    text = daemon.config_path.read_text().replace("[smtp]\n", f"[smtp]\nworkers = {workers}\n")
    daemon.config_path.write_text(text)
    daemon.start()
    served_everywhere(daemon, pem_fingerprint(tmp_path / "data" / "tls" / "relay.crt"))
    auth = {"Authorization": f"Bearer {daemon.token}"}

    def put(cert: str, key: str) -> httpx.Response:
        document = {"smtp": {"tls_cert": str(tmp_path / cert), "tls_key": str(tmp_path / key)}}
        return httpx.put(f"{daemon.url}/api/admin/config", json=document, headers=auth)

    answer = put("new.crt", "new.key")
    assert answer.status_code == 200, answer.text
    assert answer.json()["restart_required"] is False
    assert answer.json()["data"]["restart_required_for"] == []
    new = pem_fingerprint(tmp_path / "new.crt")
    served_everywhere(daemon, new)
    assert f"serving the new TLS certificate {tmp_path / 'new.crt'}" in daemon.log.read_text()

    refused = put("other.crt", "new.key")  # a key that does not match the certificate
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "INVALID_REQUEST" and error["details"]["field"] == "smtp.tls_cert"
    assert "cannot load certificate" in error["message"]
    shown = httpx.get(f"{daemon.url}/api/admin/config", headers=auth).json()["data"]["smtp"]
    assert shown["tls_cert"] == str(tmp_path / "new.crt")
    served_everywhere(daemon, new, timeout=5)

    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.log.read_text()
