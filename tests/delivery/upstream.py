"""An upstream that closes the session after a 421, as a real server going away does.

aiosmtpd answers what :class:`tests.sink.Sink` is told to answer but keeps the session
open after a 421; a server that says 421 ("service not available, closing transmission
channel", RFC 5321 3.8) hangs up right after. ``Upstream`` does, at MAIL, at any RCPT,
instead of DATA's 354 (``data_start``) or after the message (``data_reply``). It also
notes the address of every RCPT it was sent (``rcpts``), refused ones included::

    Upstream(rcpt_replies={"c@x.test": "421 4.3.2 going down"}, data_start="421 4.3.2 bye")
"""

from __future__ import annotations

import asyncio
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from tests.sink import Sink, _SinkSMTP


class _Closing(_SinkSMTP):
    sink: Upstream

    async def push(self, status: AnyStr) -> None:
        await super().push(status)
        text = status.decode() if isinstance(status, bytes) else str(status)
        if text.startswith("421") and self.transport is not None:
            self.transport.close()

    async def smtp_RCPT(self, arg: str | None) -> None:
        address = (arg or "").partition(":")[2].strip().split(" ")[0].strip("<>")
        self.sink.rcpts.append(address)
        await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if self.sink.data_start and self.envelope is not None and self.envelope.rcpt_tos:
            await self.push(self.sink.data_start)
            return
        await super().smtp_DATA(arg)


class Upstream(Sink):
    """A :class:`Sink` (plain SMTP, no TLS or AUTH) that hangs up after every 421."""

    def __init__(self, *, data_start: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.data_start = data_start
        self.rcpts: list[str] = []  # every RCPT TO address, accepted or not

    def _protocol(self) -> SMTP:
        return _Closing(self, hostname="upstream.test", loop=asyncio.get_running_loop())

    async def __aenter__(self) -> Upstream:
        await self.start()
        return self
