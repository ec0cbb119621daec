#!/usr/bin/env python3
"""A do-nothing aiosmtpd server: the floor under relayd's SMTP figures.

    .venv/bin/python bench/null_smtpd.py PORT

Every transaction gets ``250 OK`` and the message is thrown away: no parsing,
no storage, no delivery. ``--target aiosmtpd-null`` in the SMTP benches starts it,
so relayd can be compared with what aiosmtpd itself costs on the same machine
(uvloop, one process).
"""

from __future__ import annotations

import asyncio
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session


class NullHandler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 OK"


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(NullHandler(), hostname="null.bench", ident="null", loop=loop),
        "127.0.0.1",
        port,
        backlog=1024,
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    import uvloop

    uvloop.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
