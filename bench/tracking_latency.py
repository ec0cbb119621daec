#!/usr/bin/env python3
"""Open-pixel and click latency of a running relayd under load (wrk), with tracking on.

Starts ``relayd`` (SQLite in a temporary data_dir, outbox provider, uvloop as
relayd picks it), sends one campaign message through the API, takes the pixel
and the first click link from the delivered .eml, then drives each with wrk and
prints requests/s and the latency distribution. Every hit is a real recorded
event (one committed row per open/click, through the group committer), so the
figures include the write path; at the end the recorded totals are checked
against the number of requests wrk completed.

    .venv/bin/python bench/tracking_latency.py [--seconds 10] [--connections 32] [--threads 2]

Needs ``wrk`` (``sudo apt-get install -y wrk``).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from email import message_from_bytes
from pathlib import Path
from typing import Any

from common import stop_process

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TOKEN = "bench-admin-token-" + "t" * 16


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def api(port: int, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for(check: Any, what: str, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def tracked_urls(eml: bytes) -> tuple[str, str]:
    for part in message_from_bytes(eml).walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            text = payload.decode()
            pixel = re.search(r'<img src="([^"]*webhook/pixel[^"]*)"', text)
            click = re.search(r'href="([^"]*webhook/click[^"]*)"', text)
            if pixel and click:
                return html.unescape(pixel.group(1)), html.unescape(click.group(1))
    raise SystemExit("the delivered message has no tracking pixel or click link")


def run_wrk(wrk: str, args: argparse.Namespace, url: str) -> tuple[int, str]:
    """Run wrk on ``url``; print its figures; return the completed request count."""
    result = subprocess.run(
        [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=args.seconds + 60,
        check=True,
    )
    out = result.stdout
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out) or "Socket errors" in out:
        raise SystemExit(f"errors during the run; figures not trusted:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    lat = {p: re.search(rf"{p}%\s+(\S+)", out) for p in ("50", "75", "90", "99")}
    if rate is None or done is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    line = ", ".join(f"p{p} {m.group(1) if m else '?'}" for p, m in lat.items())
    return int(done.group(1)), f"{float(rate.group(1)):.0f} req/s, {line}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing; install it with: sudo apt-get install -y wrk")
    relayd = shutil.which("relayd", path=str(Path(sys.executable).parent)) or "relayd"
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="relay-bench-tracking-"))
    env = {
        **os.environ,
        "RELAY_DATA_DIR": str(data),
        "RELAY_HTTP_PORT": str(port),
        "RELAY_SMTP_PORT": str(free_port()),
        "RELAY_SMTP_TLS_PORT": str(free_port()),
        "RELAY_ADMIN_TOKEN": TOKEN,
        "RELAY_TRACKING_ENABLED": "true",
        "RELAY_LOG_LEVEL": "warning",
        "RELAY_RATE_LIMITS_GLOBAL_DAILY": "0",
    }
    server = subprocess.Popen([relayd], env=env, start_new_session=True)
    try:
        wait_for(lambda: api(port, "GET", "/health"), "relayd to start")
        api(port, "POST", "/api/recipients", {"email": "reader@example.org"})
        sent = api(
            port,
            "POST",
            "/api/messages",
            {
                "from": "news@bench.example",
                "to": ["reader@example.org"],
                "subject": "Bench",
                "campaign_id": "bench",
                "html_body": '<html><body><a href="https://example.com/landing">go</a></body></html>',
            },
        )
        mid = sent["data"]["message_id"]
        eml = data / "outbox" / f"{mid}.eml"
        wait_for(eml.exists, "the message to reach the outbox")
        pixel, click = tracked_urls(eml.read_bytes())
        print(
            f"relayd on {HOST}:{port}, SQLite, {args.connections} connections, "
            f"{args.threads} wrk threads, {args.seconds}s per endpoint"
        )
        opens, figures = run_wrk(wrk, args, pixel)
        print(f"  GET /webhook/pixel: {figures}")
        clicks, figures = run_wrk(wrk, args, click)
        print(f"  GET /webhook/click (302): {figures}")
        detail = api(port, "GET", "/api/recipients/reader@example.org")["data"]["engagement"]
        stats = api(port, "GET", "/api/campaigns/bench/stats")["data"]["stats"]
        print(
            f"  recorded: {detail['total_opened']} opens (wrk completed {opens}), "
            f"{detail['total_clicked']} clicks (wrk completed {clicks}); "
            f"campaign unique opened={stats['opened']} clicked={stats['clicked']}"
        )
    finally:
        stop_process(server, timeout=30)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
