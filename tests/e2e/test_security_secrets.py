"""No secret reaches relayd's log, even at debug level, nor any API answer: a real relayd
with every kind of secret configured, fed wrong SMTP AUTH blobs, keys pasted into the wrong
field, bad API keys and JWTs, and mail its providers fail to deliver."""

from __future__ import annotations

import base64
import json
import smtplib
import ssl
import time
from pathlib import Path

import httpx
import jwt

from tests.e2e.conftest import Daemon, free_port

JWT_SECRET = "jwt-secret-0123456789-0123456789-abcdef"
TRACKING_SECRET = "tracking-secret-0123456789"
MANDRILL_KEY = "mandrill-key-0123456789"
UPSTREAM_PASSWORD = "upstream-password-0123456789"
MAILGUN_KEY = "key-mailgun-0123456789"
SENDGRID_KEY = "SG.sendgrid-0123456789"
WRONG_PASSWORDS = ["wrong-password-0123456789", "raw-not-base64-0123456789!"]


def _toml() -> str:
    closed = free_port()  # nothing listens: every delivery fails and is logged
    return f"""
[auth]
jwt_secret = "{JWT_SECRET}"
[tracking]
enabled = true
secret = "{TRACKING_SECRET}"
[webhooks]
mandrill_key = "{MANDRILL_KEY}"
[providers.up]
type = "smtp"
host = "127.0.0.1"
port = {closed}
username = "relay"
password = "{UPSTREAM_PASSWORD}"
[providers.mg]
type = "mailgun"
api_key = "{MAILGUN_KEY}"
domain = "mg.example.com"
base_url = "http://127.0.0.1:{closed}"
priority = 2
[providers.sg]
type = "sendgrid"
api_key = "{SENDGRID_KEY}"
base_url = "http://127.0.0.1:{closed}"
priority = 3
"""


def _smtp_dialogue(daemon: Daemon, key: str) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    b64 = base64.b64encode
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.starttls(context=context)
        client.ehlo()
        assert (
            client.docmd("AUTH", "PLAIN " + b64(f"\0ws-a\0{WRONG_PASSWORDS[0]}".encode()).decode())[
                0
            ]
            == 535
        )
        assert client.docmd("AUTH", "LOGIN")[0] == 334
        assert client.docmd(b64(b"ws-a").decode())[0] == 334
        assert client.docmd(WRONG_PASSWORDS[1])[0] == 501  # not base64: refused unread
    with smtplib.SMTP("127.0.0.1", daemon.smtp_port, timeout=30) as client:
        client.starttls(context=context)
        client.ehlo()
        # The key pasted into the username as well, then the admin token in both fields.
        assert client.docmd("AUTH", "PLAIN " + b64(f"\0{key}\0{key}".encode()).decode())[0] == 535
        token = daemon.token
        assert (
            client.docmd("AUTH", "PLAIN " + b64(f"\0{token}\0{token}".encode()).decode())[0] == 235
        )
        client.sendmail("a@example.com", ["b@example.org"], b"Subject: s\r\n\r\nbody\r\n")


def test_secrets_stay_out_of_the_debug_log_and_the_api(
    daemon_factory: type[Daemon], tmp_path: Path
) -> None:
    class Debug(daemon_factory):  # type: ignore[valid-type,misc]
        def _pick_ports(self) -> None:
            super()._pick_ports()
            self.config_path.write_text('log_level = "debug"\n' + self.config_path.read_text())

    daemon = Debug(tmp_path, _toml())
    daemon.start()
    admin = {"Authorization": f"Bearer {daemon.token}"}
    with httpx.Client(base_url=daemon.url, timeout=30) as http:
        assert http.post("/api/admin/workspaces", json={"id": "ws-a"}, headers=admin).is_success
        key = http.post("/api/admin/keys", json={"workspace_id": "ws-a"}, headers=admin).json()
        key = key["data"]["key"]
        forged = jwt.encode({"workspace_id": "ws-a", "exp": int(time.time()) + 60}, "x" * 32)
        for bad in (key[:-4] + "0000", forged, daemon.token + "x", "garbage"):
            assert http.get("/api/messages", headers={"X-API-Key": bad}).status_code == 401
        _smtp_dialogue(daemon, key)
        answers = [
            http.get(path, headers=admin).text
            for path in (
                "/api/admin/config",
                "/api/admin/providers",
                "/api/stats",
                "/metrics",
                "/api/admin/keys",
                "/health",
            )
        ]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the providers have failed it at least once
            listed = http.get("/api/messages", headers=admin).json()["data"]["messages"]
            if listed and listed[0]["status"] != "queued":
                break
            time.sleep(0.2)
    shown = daemon.relayctl("config", "show")
    assert shown.returncode == 0, shown.stderr
    assert daemon.terminate() == 0
    log = daemon.log.read_text()
    assert "auth failed" in log and "DEBUG" in log  # the log did record at debug level
    secrets = [
        JWT_SECRET,
        TRACKING_SECRET,
        MANDRILL_KEY,
        UPSTREAM_PASSWORD,
        MAILGUN_KEY,
        SENDGRID_KEY,
        daemon.token,
        key,
        *WRONG_PASSWORDS,
        base64.b64encode(f"\0ws-a\0{WRONG_PASSWORDS[0]}".encode()).decode(),
    ]
    for where, text in [
        ("relayd.log", log),
        ("relayctl config show", shown.stdout + shown.stderr),
        *(("API", answer) for answer in answers),
    ]:
        for secret in secrets:
            assert secret not in text, f"{where} shows {secret!r}"
    assert json.loads(answers[0])["data"]["providers"]["up"]["password"] == "********"
