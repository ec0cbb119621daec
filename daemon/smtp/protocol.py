"""The SMTP protocol: aiosmtpd's ``SMTP`` with the protocol-level pieces relay needs.

aiosmtpd 1.4.6 refuses the RFC 3461 DSN parameters (RET, ENVID, NOTIFY,
ORCPT) with 555, refuses the null reverse path ``MAIL FROM:<>`` that bounces
and DSNs use, and hard-codes replies without RFC 3463 enhanced status codes.
This subclass parses MAIL and RCPT itself, hands the parsed values to the
handler hooks, adds enhanced codes to every 2xx/4xx/5xx reply it sends
(except the greeting and the HELO/EHLO replies, per RFC 2034), and
advertises ENHANCEDSTATUSCODES, PIPELINING and DSN. It holds no policy:
who may relay and which addresses are acceptable is the handler's call.

The CVE-2024-34083 fix of aiosmtpd (drop whatever was pipelined after
STARTTLS) is inherited unchanged; tests/smtp/test_starttls.py guards it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import re
import typing
from typing import Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from daemon.core.message import Recipient
from daemon.core.relay import split_path
from daemon.smtp.params import (
    ParamError,
    mail_params,
    parse_params,
    rcpt_params,
)

MAX_RECIPIENTS = 1000
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |\Z)")

# The enhanced status code added to a hard-coded reply, by reply code (RFC 3463).
_DEFAULT_STATUS = {
    "221": "2.0.0",
    "250": "2.0.0",
    "252": "2.0.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}
_REWORDED = {
    "552 Error: Too much mail data": "552 5.3.4 Message size exceeds fixed maximum message size",
    "250 OK": "250 2.0.0 Ok",
    "221 Bye": "221 2.0.0 Bye",
}
SHUTDOWN_REPLY = "421 4.3.2 Service shutting down, try again later"


class RelaySession(Session):
    """aiosmtpd's Session without its deprecation warning on every successful AUTH."""

    login_data: Any = None


class RelayEnvelope(Envelope):
    """The envelope plus what RFC 3461 and BODY= add to it."""

    def __init__(self) -> None:
        super().__init__()
        self.recipients: list[Recipient] = []
        self.body: str | None = None
        self.dsn_ret: str | None = None
        self.dsn_envid: str | None = None


def with_enhanced_code(reply: str) -> str:
    """Add an RFC 3463 enhanced status code to a 2xx/4xx/5xx reply that lacks one."""
    if reply in _REWORDED:
        return _REWORDED[reply]
    code, text = reply[:3], reply[4:]
    if len(reply) < 4 or reply[3] not in " -" or code[0] not in "245" or _ENHANCED.match(text):
        return reply
    status = _DEFAULT_STATUS.get(code, f"{code[0]}.0.0")
    return f"{code}{reply[3]}{status} {text}" if text else f"{code}{reply[3]}{status}"


class RelaySMTP(SMTP):
    """One SMTP session. Build it through :class:`daemon.smtp.listener.SmtpListeners`."""

    def __init__(
        self,
        handler: Any,
        *,
        implicit_tls: bool = False,
        sessions: set[RelaySMTP] | None = None,
        **kwargs: Any,
    ) -> None:
        # On the SMTPS port the whole session is TLS, so AUTH needs no STARTTLS first.
        super().__init__(handler, auth_require_tls=not implicit_tls, **kwargs)
        self.implicit_tls = implicit_tls
        # aiosmtpd keeps these limits in a class-level dict shared by every session and
        # grows them on each EHLO; a per-session dict with room for DSN parameters instead.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, {"MAIL": 1000, "RCPT": 1000}
        )
        self._sessions = sessions
        self._greeted = False
        self._plain_replies = False
        self._busy = False
        self._closing = False

    # -- session plumbing -------------------------------------------------------------

    def _create_session(self) -> Session:
        return RelaySession(self.loop)

    def _create_envelope(self) -> Envelope:
        return RelayEnvelope()

    @property
    def tls_active(self) -> bool:
        """True once the session is encrypted (after STARTTLS, or from the start on SMTPS)."""
        return self.implicit_tls or self._tls_protocol is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._handler_coroutine is None
        super().connection_made(transport)
        if first and self._handler_coroutine is not None:
            # A client vanishing mid-reply ends the session task with an error nobody
            # awaits; consume it so it is not reported as "never retrieved".
            self._handler_coroutine.add_done_callback(_consume_result)
            if self._sessions is not None:
                self._sessions.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        if self._sessions is not None:
            self._sessions.discard(self)
        super().connection_lost(error)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command == "DATA":
            self._busy = True  # until the reply to DATA is written: see shutdown()
        return await super()._call_handler_hook(command, *args)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            if not self._greeted:
                self._greeted = True
            elif not (self._plain_replies and status.startswith("250")):
                status = with_enhanced_code(status)
        await super().push(status)
        self._busy = False
        closing = self._closing or (isinstance(status, str) and status.startswith("421"))
        if closing and self.transport is not None:
            self.transport.close()

    def shutdown(self) -> None:
        """Say 421 and close, or, mid-commit, close right after the reply to DATA."""
        self._closing = True
        if not self._busy and self.transport is not None and not self.transport.is_closing():
            transport = typing.cast(asyncio.WriteTransport, self.transport)
            transport.write(SHUTDOWN_REPLY.encode() + b"\r\n")
            transport.close()

    @property
    def busy(self) -> bool:
        return self._busy

    # -- commands ---------------------------------------------------------------------

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()  # type: ignore[no-untyped-call]
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [f"{self.hostname} Hello {hostname}"]
        if self.data_size_limit:
            lines.append(f"SIZE {self.data_size_limit}")
        lines += ["8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"]
        if self.tls_context and not self._tls_protocol:
            lines.append("STARTTLS")
        if self.tls_active and self._auth_methods:
            lines.append("AUTH " + " ".join(sorted(self._auth_methods, key=_mechanism_order)))
        lines.append("DSN")
        # One write for the whole multi-line reply: it is sent once per connection.
        reply = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}"
        self._plain_replies = True
        try:
            await self.push(reply)
        finally:
            self._plain_replies = False

    # -- AUTH ---------------------------------------------------------------------------
    # aiosmtpd checks credentials through a synchronous callback; relay's check may need
    # the database (workspace API keys), so both mechanisms hand them to an async hook.

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        blob = await (self.challenge_auth("") if len(args) == 1 else self._b64_argument(args[1]))
        if not isinstance(blob, bytes):  # the reason was already sent
            return AuthResult(success=False)
        try:
            _authzid, login, password = blob.split(b"\0")
        except ValueError:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False)
        return await self._check_credentials("PLAIN", LoginPassword(login, password))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        login = await (
            self.challenge_auth(self.AuthLoginUsernameChallenge)
            if len(args) == 1
            else self._b64_argument(args[1])
        )
        if not isinstance(login, bytes):
            return AuthResult(success=False)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False)
        return await self._check_credentials("LOGIN", LoginPassword(login, password))

    async def _b64_argument(self, text: str) -> bytes | None:
        try:
            return base64.b64decode(text.encode(), validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Can't decode base64")
            return None

    async def _check_credentials(self, mechanism: str, credentials: LoginPassword) -> AuthResult:
        verify = getattr(self.event_handler, "verify_credentials", None)
        if verify is None:  # no credential policy: nobody authenticates
            return AuthResult(success=False, handled=False)
        result: AuthResult = await verify(self.session, mechanism, credentials)
        return result

    async def smtp_STARTTLS(self, arg: str) -> None:
        # aiosmtpd would stack a second TLS layer on an encrypted session.
        if self.tls_active:
            await self.push("554 5.5.1 Error: TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        assert self.session is not None and isinstance(self.envelope, RelayEnvelope)
        syntax = "501 5.5.4 Syntax: MAIL FROM:<address>"
        rest = self._strip_command_keyword("FROM:", arg) if arg else None
        if rest is None:
            await self.push(syntax)
            return
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        try:
            path, param_text = split_path(rest)
        except ValueError:
            await self.push("501 5.1.7 Bad sender address syntax")
            return
        if param_text and not self.session.extended_smtp:
            await self.push(syntax)
            return
        try:
            params = mail_params(parse_params(param_text), self.data_size_limit)
        except ParamError as exc:
            await self.push(str(exc))
            return
        status = await self._call_handler_hook("MAIL", path, params)
        if status is MISSING:
            self.envelope.mail_from = path
            status = "250 2.1.0 Ok"
        await self.push(status)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        assert self.session is not None and isinstance(self.envelope, RelayEnvelope)
        if self.envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        syntax = "501 5.5.4 Syntax: RCPT TO:<address>"
        rest = self._strip_command_keyword("TO:", arg) if arg else None
        if rest is None:
            await self.push(syntax)
            return
        try:
            path, param_text = split_path(rest)
        except ValueError:
            await self.push("501 5.1.3 Bad recipient address syntax")
            return
        if not path or (param_text and not self.session.extended_smtp):
            await self.push(syntax)
            return
        if len(self.envelope.recipients) >= MAX_RECIPIENTS:
            await self.push("452 4.5.3 Too many recipients")
            return
        try:
            params = rcpt_params(parse_params(param_text))
        except ParamError as exc:
            await self.push(str(exc))
            return
        status = await self._call_handler_hook("RCPT", path, params)
        if status is MISSING:
            # Without a recipient policy aiosmtpd would accept anyone: fail closed.
            status = "554 5.7.1 Relay access denied"
        await self.push(status)


def _consume_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _mechanism_order(name: str) -> tuple[bool, str]:
    return (name != "PLAIN", name)
