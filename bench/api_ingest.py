#!/usr/bin/env python3
"""POST /api/messages throughput (durable queueing) next to a bare Starlette JSON endpoint.

One uvicorn process serves both, in the same run: ``POST /bare`` parses the JSON
body and answers a small JSON document (what any JSON API does at the least);
``POST /api/messages`` is relayd's send endpoint, which validates the body,
composes the MIME message and commits it to the queue (SQLite, synchronous=FULL)
before answering 202. No delivery workers run, so only ingest is measured.

    .venv/bin/python bench/api_ingest.py [--seconds 10] [--connections 64] [--threads 2]

Needs ``wrk`` (``sudo apt-get install -y wrk``). The send endpoint is called with
the admin token, which is exempt from rate limits: a workspace key is held to
the reference's 100 sends per minute, far below what is measured here.
Target: send >= 0.5x bare.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from common import stop_process

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TOKEN = "bench-admin-token-" + "x" * 16
BODY = {
    "from": "sender@bench.example",
    "to": ["rcpt@example.org"],
    "subject": "Benchmark message",
    "text_body": "Hello,\n\nthis is a benchmark message of a few hundred bytes.\n" * 4,
    "metadata": {"source": "bench"},
}


def serve(port: int, data_dir: str) -> None:
    """The server side (run in a subprocess): relayd's API app plus /bare on one uvicorn."""
    sys.path.insert(0, str(ROOT))
    # As relayd runs (daemon/cli.py): the store's writer thread gets the GIL back quickly.
    sys.setswitchinterval(0.001)
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Mount, Route

    from daemon.api import create_app
    from daemon.config import build_config
    from daemon.service import RelayService
    from daemon.store.engine import make_engine
    from daemon.store.migrate import upgrade

    config = build_config(
        [
            (
                "bench",
                {
                    "data_dir": data_dir,
                    "auth": {"admin_token": TOKEN},
                    # Quotas off: the run sends more than a default day's worth.
                    "rate_limits": {"global_daily": 0, "workspace_default": 0},
                },
            )
        ]
    )
    engine = make_engine(config.database_url)
    upgrade(engine)
    service = RelayService(config, engine)
    relay_app = create_app(service)

    async def bare(request: Request) -> Response:
        document = await request.json()
        return JSONResponse(
            {"success": True, "data": {"fields": len(document), "status": "queued"}},
            status_code=202,
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.close()
        engine.dispose()

    app = Starlette(
        routes=[Route("/bare", bare, methods=["POST"]), Mount("/", app=relay_app)],
        lifespan=lifespan,
    )
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def call(port: int, path: str, body: Any, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_ready(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start within 30 s")


def lua_script(directory: Path, headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(json.dumps(BODY))}"]
    lines.append('wrk.headers["Content-Type"] = "application/json"')
    for name, value in headers.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    path = directory / f"post-{len(list(directory.iterdir()))}.lua"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(wrk: str, args: argparse.Namespace, url: str, script: Path, seconds: int) -> float:
    """Requests per second from one wrk run; refuses a run with non-2xx answers."""
    result = subprocess.run(
        [
            wrk,
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", result.stdout)
    if bad:
        raise SystemExit(f"{url}: {bad.group(1)} non-2xx answers; figures not trusted")
    found = re.search(r"Requests/sec:\s+([\d.]+)", result.stdout)
    if found is None:
        raise SystemExit(f"cannot read wrk's output:\n{result.stdout}")
    p99 = re.search(r"99%\s+(\S+)", result.stdout)
    print(f"  {url}: {float(found.group(1)):.0f} req/s, p99 {p99.group(1) if p99 else '?'}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is missing; install it with: sudo apt-get install -y wrk")
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-api-"))
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port), str(workdir / "data")],
        start_new_session=True,
    )
    try:
        wait_ready(port, time.monotonic() + 30)
        admin = {"Authorization": f"Bearer {TOKEN}"}
        scripts = workdir / "lua"
        scripts.mkdir()
        rows = [
            ("bare Starlette JSON endpoint", "/bare", {}),
            ("POST /api/messages, admin token", "/api/messages", admin),
        ]
        results: dict[str, float] = {}
        for name, path, headers in rows:
            script = lua_script(scripts, headers)
            url = f"http://{HOST}:{port}{path}"
            run_wrk(wrk, args, url, script, 2)  # warm-up
            results[name] = run_wrk(wrk, args, url, script, args.seconds)
        bare = results[rows[0][0]]
        print(f"\n{'endpoint':<36} {'req/s':>8} {'x bare':>7}")
        for name, rate in results.items():
            print(f"{name:<36} {rate:>8.0f} {rate / bare:>7.2f}")
        print(
            f"\n{args.connections} connections, {args.threads} wrk threads, {args.seconds} s each;"
        )
        print("one uvicorn process; SQLite WAL, synchronous=FULL; target: send >= 0.5x bare")
    finally:
        stop_process(server, timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
