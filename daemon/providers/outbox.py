"""The outbox provider: each delivered message becomes an .eml file (development, first run)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from daemon.config import Config, ProviderConfig
from daemon.core.retry import SENT, TEMPORARY
from daemon.providers.base import DeliveryResult, Envelope, HealthResult


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync, then rename: readers never see half a message."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class OutboxProvider:
    """Writes ``<id>.eml`` (the stored bytes, unchanged) and ``<id>.envelope.json``."""

    type = "outbox"

    def __init__(self, provider_id: str, directory: Path) -> None:
        self.id = provider_id
        self.directory = directory

    @classmethod
    def from_config(cls, pc: ProviderConfig, config: Config) -> OutboxProvider:
        path = pc.option("path") or str(config.data_path / "outbox")
        return cls(pc.id, Path(path))

    def _deliver(self, envelope: Envelope) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "id": envelope.id,
            "mail_from": envelope.mail_from,
            "recipients": [r.address for r in envelope.recipients],
        }
        _write_atomic(
            self.directory / f"{envelope.id}.envelope.json",
            json.dumps(meta, indent=2).encode() + b"\n",
        )
        name = f"{envelope.id}.eml"
        _write_atomic(self.directory / name, envelope.raw)
        _fsync_dir(self.directory)
        return name

    async def send(self, envelope: Envelope) -> DeliveryResult:
        """Write the message; a full or unwritable disk is a temporary failure."""
        try:
            name = await asyncio.to_thread(self._deliver, envelope)
        except OSError as exc:
            reply = f"cannot write to outbox {self.directory}: {exc.strerror or exc}"
            return DeliveryResult.uniform(TEMPORARY, envelope.recipients, reply=reply)
        return DeliveryResult.uniform(
            SENT,
            envelope.recipients,
            code=250,
            reply=f"written to {name}",
            provider_message_id=name,
        )

    async def check(self) -> HealthResult:
        start = time.monotonic()

        def probe() -> str:
            self.directory.mkdir(parents=True, exist_ok=True)
            return "" if os.access(self.directory, os.W_OK) else "directory is not writable"

        try:
            problem = await asyncio.to_thread(probe)
        except OSError as exc:
            problem = str(exc)
        latency = int((time.monotonic() - start) * 1000)
        return HealthResult(not problem, latency, problem or str(self.directory))

    async def close(self) -> None:
        return None
