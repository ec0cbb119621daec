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
import logging
import re
import types
import typing
import weakref
from collections.abc import Callable, Iterable
from typing import Any, AnyStr

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    _AuthMechAttr,
    syntax,
)

from daemon.core.message import Recipient
from daemon.core.relay import split_path
from daemon.smtp.params import (
    MailParams,
    ParamError,
    RcptParams,
    mail_params,
    parse_params,
    rcpt_params,
)

log = logging.getLogger("mail.log")  # where aiosmtpd logs what the session does

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
    "500 Error: strict ASCII mode": (
        "500 5.5.2 Non-ASCII characters in a command; this server does not offer SMTPUTF8"
    ),
}
SHUTDOWN_REPLY = "421 4.3.2 Service shutting down, try again later"
# DATA: a line of only "." ends it; a longer line than aiosmtpd takes, or more bytes than
# the size limit, is answered once the whole message has been read (RFC 5321 4.2.5).
_END_OF_DATA = b"\r\n.\r\n"
_NOMINAL, _TOO_LONG, _TOO_MUCH = "nominal", "too long", "too much"
_TOO_LONG_REPLY = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's words
_TOO_MUCH_REPLY = "552 Error: Too much mail data"
# The StreamReader internals the block reader below relies on (CPython 3.8 and later).
_READER_INTERNALS = all(
    hasattr(asyncio.StreamReader, name) for name in ("_wait_for_data", "_maybe_resume_transport")
)
# MAIL and RCPT without parameters (nearly all of them) share one parsed value.
_NO_MAIL_PARAMS = MailParams()
_NO_RCPT_PARAMS = RcptParams()
# Replies already given their enhanced code: the same few hard-coded texts come back.
_ENHANCED_CACHE: dict[str, str] = {}


class RelaySession(Session):
    """aiosmtpd's Session without its deprecation warning on every successful AUTH, and
    with the count of its failed AUTH attempts (the handler closes it after too many)."""

    login_data: Any = None
    auth_failures: int = 0


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
    cached = _ENHANCED_CACHE.get(reply)
    if cached is not None:
        return cached
    result = _with_enhanced_code(reply)
    if len(_ENHANCED_CACHE) < 1024 and len(reply) <= 200 and "queued as" not in reply:
        _ENHANCED_CACHE[reply] = result
    return result


def _with_enhanced_code(reply: str) -> str:
    if reply in _REWORDED:
        return _REWORDED[reply]
    code, text = reply[:3], reply[4:]
    if len(reply) < 4 or reply[3] not in " -" or code[0] not in "245" or _ENHANCED.match(text):
        return reply
    status = _DEFAULT_STATUS.get(code, f"{code[0]}.0.0")
    return f"{code}{reply[3]}{status} {text}" if text else f"{code}{reply[3]}{status}"


_NAMES: dict[tuple[type, tuple[str, ...]], list[str]] = {}


def names_for_aiosmtpd(cls: type, prefixes: tuple[str, ...]) -> list[str]:
    """The attributes of ``cls`` starting with ``prefixes``, listed once per class.

    aiosmtpd's ``SMTP.__init__`` lists and evaluates every attribute of the
    session and of its handler on each new connection, to find the AUTH
    mechanisms, SMTP commands and handler hooks; both classes answer ``dir()``
    with just these names while that runs.
    """
    key = (cls, prefixes)
    names = _NAMES.get(key)
    if names is None:
        names = _NAMES[key] = sorted(n for n in dir(cls) if n.startswith(prefixes))
    return names


class _Template:
    """What aiosmtpd's ``SMTP.__init__`` computed for one handler and set of options.

    Everything it sets is the same for every connection of a listener except the
    stream protocol's own state (a fresh StreamReader, futures, the transport) and
    the methods bound to the session itself; those are made anew per connection.
    """

    def __init__(self, session: RelaySMTP, protocol_keys: frozenset[str]) -> None:
        state = vars(session)
        self.shared = {
            k: v
            for k, v in state.items()
            if k not in protocol_keys and k not in ("_smtp_methods", "_auth_methods")
        }
        self.smtp_methods = {name: m.__func__ for name, m in session._smtp_methods.items()}
        self.auth_methods = {
            name: (_function(attr.method) if attr.is_builtin else attr.method, attr.is_builtin)
            for name, attr in session._auth_methods.items()
        }


_PROTOCOL_KEYS: dict[type, frozenset[str]] = {}


def _function(method: Any) -> Any:
    """The plain function behind a method bound to a session."""
    return method.__func__


def _protocol_keys(cls: type[SMTP], loop: asyncio.AbstractEventLoop) -> frozenset[str]:
    """The attributes ``asyncio.StreamReaderProtocol.__init__`` sets on a session."""
    keys = _PROTOCOL_KEYS.get(cls)
    if keys is None:
        probe = object.__new__(cls)
        asyncio.StreamReaderProtocol.__init__(
            probe, asyncio.StreamReader(loop=loop), client_connected_cb=_no_client, loop=loop
        )
        keys = _PROTOCOL_KEYS[cls] = frozenset(vars(probe))
    return keys


def _no_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    return None


class RelaySMTP(SMTP):
    """One SMTP session. Build it through :class:`daemon.smtp.listener.SmtpListeners`."""

    # aiosmtpd's __init__ costs about 40 us per connection (inspect.getmembers, dir(),
    # inspect.signature, a log line built whether logged or not), almost all of it the
    # same for every connection of a listener: it runs once per handler and options,
    # and later sessions copy what it set (see _Template; tests/smtp/test_protocol.py
    # checks that a copied session equals one aiosmtpd built).
    _templates: typing.ClassVar[weakref.WeakKeyDictionary[Any, dict[Any, _Template]]] = (
        weakref.WeakKeyDictionary()
    )

    # aiosmtpd's __init__ finds the AUTH mechanisms and SMTP commands by listing and
    # evaluating every attribute of the session (inspect.getmembers(self), dir(self)),
    # on every connection: about 170 us, as much as the rest of a short session. The
    # names it keeps are fixed per class, so while it runs, dir() lists just those.
    _listing_for_init = True

    def __dir__(self) -> Iterable[str]:
        if self._listing_for_init:
            return names_for_aiosmtpd(type(self), ("auth_", "smtp_"))
        return super().__dir__()

    def __init__(
        self,
        handler: Any,
        *,
        implicit_tls: bool = False,
        sessions: set[RelaySMTP] | None = None,
        **kwargs: Any,
    ) -> None:
        # On the SMTPS port the whole session is TLS, so AUTH needs no STARTTLS first.
        kwargs["auth_require_tls"] = not implicit_tls
        # The options (hashable: numbers, strings, the loop, the TLS context) and class.
        key = (type(self), tuple(sorted(kwargs.items())))
        templates = self._templates.get(handler)
        if templates is None:
            templates = self._templates[handler] = {}
        template = templates.get(key)
        if template is None:
            super().__init__(handler, **kwargs)
            self._listing_for_init = False
            templates[key] = _Template(self, _protocol_keys(type(self), self.loop))
        else:
            self._from_template(template)
        self._relay_init(implicit_tls, sessions)

    def _from_template(self, template: _Template) -> None:
        self.__dict__.update(template.shared)
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=self.loop,
        )
        bind: Callable[[Any], Any] = lambda func: types.MethodType(func, self)  # noqa: E731
        self._smtp_methods = {name: bind(f) for name, f in template.smtp_methods.items()}
        self._auth_methods = {
            name: _AuthMechAttr(bind(m) if builtin else m, builtin)
            for name, (m, builtin) in template.auth_methods.items()
        }

    def _relay_init(self, implicit_tls: bool, sessions: set[RelaySMTP] | None) -> None:
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
        self._deadline = 0.0

    # -- idle timeout -----------------------------------------------------------------
    # aiosmtpd replaces its timer on every command (a new TimerHandle each time); here
    # each command only moves a deadline, and the one timer re-arms itself when it fires
    # before that deadline.

    def _reset_timeout(self, duration: float | None = None) -> None:
        delay = duration or self._timeout_duration
        self._deadline = self.loop.time() + delay
        handle = self._timeout_handle
        if handle is None or handle.cancelled() or handle.when() > self._deadline:
            if handle is not None:
                handle.cancel()
            self._timeout_handle = self.loop.call_later(delay, self._timeout_cb)

    def _timeout_cb(self) -> None:
        remaining = self._deadline - self.loop.time()
        if remaining > 0.001:
            self._timeout_handle = self.loop.call_later(remaining, self._timeout_cb)
            return
        super()._timeout_cb()  # type: ignore[no-untyped-call]

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
        # aiosmtpd's push, less its debug log line: encode, write, drain.
        if isinstance(status, str):
            response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n"
        else:
            response = status + b"\r\n"
        self._writer.write(response)
        await self._writer.drain()
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

    # The overridden commands keep aiosmtpd's @syntax: HELP lists only commands that have it.

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    @syntax("EHLO hostname")
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

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        envelope = self.envelope
        if envelope is not None and envelope.mail_from is not None:
            # RFC 4954 section 4: not during a mail transaction, and a 503 says so.
            await self.push("503 5.5.1 Error: AUTH not permitted during a mail transaction")
            return
        # A client locked out for failed attempts is refused before it sends credentials.
        refusal = getattr(self.event_handler, "refuse_auth", None)
        reply = refusal(self.session) if refusal is not None else None
        if reply:
            await self.push(reply)  # a 421: push closes the connection
            return
        await super().smtp_AUTH(arg)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        blob = await (self.challenge_auth("") if len(args) == 1 else self._b64_argument(args[1]))
        if not isinstance(blob, bytes):  # the reason was already sent
            return AuthResult(success=False)
        try:
            authzid, login, password = blob.split(b"\0")
        except ValueError:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False)
        return await self._check_credentials("PLAIN", LoginPassword(login, password), authzid)

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
        if text == "=":  # RFC 4954 section 4: an empty initial response
            return b""
        try:
            return base64.b64decode(text.encode(), validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Can't decode base64")
            return None

    async def _check_credentials(
        self, mechanism: str, credentials: LoginPassword, authzid: bytes = b""
    ) -> AuthResult:
        verify = getattr(self.event_handler, "verify_credentials", None)
        if verify is None:  # no credential policy: nobody authenticates
            return AuthResult(success=False, handled=False)
        result: AuthResult = await verify(self.session, mechanism, credentials, authzid)
        return result

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        # aiosmtpd would stack a second TLS layer on an encrypted session.
        if self.tls_active:
            await self.push("554 5.5.1 Error: TLS already active")
            return
        await super().smtp_STARTTLS(arg)

    def _ready(self) -> bool:
        """HELO/EHLO seen and no AUTH owed: then the async checks need not run."""
        session = self.session
        assert session is not None
        return bool(session.host_name) and not (self._auth_required and not session.authenticated)

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        if not self._ready() and (
            await self.check_helo_needed() or await self.check_auth_needed("MAIL")
        ):
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
            params = (
                mail_params(parse_params(param_text), self.data_size_limit)
                if param_text
                else _NO_MAIL_PARAMS
            )
        except ParamError as exc:
            await self.push(str(exc))
            return
        status = await self._call_handler_hook("MAIL", path, params)
        if status is MISSING:
            self.envelope.mail_from = path
            status = "250 2.1.0 Ok"
        await self.push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message a buffer at a time instead of line by line.

        Same replies and the same rules: a line is ended by CRLF only, a line of only
        "." ends the data (so a bare LF never does: the smuggling class), a leading dot
        is removed, a line over ``line_length_limit`` octets gets 500 and more than
        ``data_size_limit`` octets 552, both sent after the terminating dot. Whatever the
        client pipelined after the dot stays in the reader for the next command.
        """
        if self._decode_data or not _READER_INTERNALS or "DATA" not in self._handle_hooks:
            await super().smtp_DATA(arg)
            return
        if not self._ready() and (
            await self.check_helo_needed() or await self.check_auth_needed("DATA")
        ):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content, state = await self._read_data()
        except asyncio.CancelledError:
            log.info("Connection lost during DATA")
            self._writer.close()
            raise
        if state is not _NOMINAL:
            await self.push(_TOO_LONG_REPLY if state is _TOO_LONG else _TOO_MUCH_REPLY)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self) -> tuple[bytes, str]:
        """The message up to the line of only ".", dot-unstuffed, and how it went."""
        reader = self._reader
        buf: bytearray = reader._buffer  # type: ignore[attr-defined]
        longest = self.line_length_limit  # octets, CRLF included
        limit = self.data_size_limit or 0
        parts: list[bytes] = []
        size = 0  # octets of the lines so far, as sent (before unstuffing)
        partial = 0  # octets of an over-long line already dropped from the buffer
        state = _NOMINAL
        while True:
            # Every complete line now in the buffer, up to the end of the data if it is there.
            if not partial and buf[:3] == b".\r\n":
                end, finished = 0, True
            else:
                marker = buf.find(_END_OF_DATA)
                finished = marker >= 0
                if not finished:
                    marker = buf.rfind(b"\r\n")
                end = marker + 2 if marker >= 0 else 0
            if end:
                if state is not _NOMINAL:
                    pass  # being discarded: only the end matters now
                elif (
                    not partial
                    and (end <= longest or max(map(len, buf[:end].split(b"\r\n"))) <= longest - 2)
                    and not (limit and size + end > limit)
                ):
                    size += end
                    parts.append(_unstuff(bytes(buf[:end])))
                else:
                    size, state = self._lines(buf, end, partial, size, state, parts)
                partial = 0
                del buf[:end]
            if finished:
                del buf[:3]
                reader._maybe_resume_transport()  # type: ignore[attr-defined]
                if state is not _NOMINAL:
                    return b"", state
                return b"".join(parts), state
            if len(buf) > longest:
                # No line end within the limit: drop the line's start as it comes, as
                # aiosmtpd does, keeping a final CR that may start the CRLF.
                drop = len(buf) - (1 if buf.endswith(b"\r") else 0)
                size += drop
                partial += drop
                state, parts = (_TOO_LONG, []) if state is _NOMINAL else (state, parts)
                del buf[:drop]
            reader._maybe_resume_transport()  # type: ignore[attr-defined]
            error = reader.exception()
            if error is not None:
                raise error
            if reader._eof:  # type: ignore[attr-defined]
                raise asyncio.IncompleteReadError(bytes(buf), None)
            await reader._wait_for_data("readuntil")  # type: ignore[attr-defined]

    def _lines(
        self, buf: bytearray, end: int, partial: int, size: int, state: str, parts: list[bytes]
    ) -> tuple[int, str]:
        """Line by line through ``buf[:end]``, in aiosmtpd's order of checks."""
        longest = self.line_length_limit
        limit = self.data_size_limit or 0
        pos = 0
        while pos < end and state is _NOMINAL:
            eol = buf.find(b"\r\n", pos, end) + 2
            length = partial + eol - pos
            size += eol - pos
            if length > longest + 2:  # aiosmtpd's reader overruns its limit first
                state = _TOO_LONG
            elif limit and size > limit:
                state = _TOO_MUCH
            elif length > longest:
                state = _TOO_LONG
            else:
                parts.append(_unstuff(bytes(buf[pos:eol])))
            partial = 0
            pos = eol
        if state is not _NOMINAL:
            parts.clear()
        return size, state

    @syntax("RCPT TO: <address>", extended=" [SP <rcpt-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        if not self._ready() and (
            await self.check_helo_needed() or await self.check_auth_needed("RCPT")
        ):
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
            params = rcpt_params(parse_params(param_text)) if param_text else _NO_RCPT_PARAMS
        except ParamError as exc:
            await self.push(str(exc))
            return
        status = await self._call_handler_hook("RCPT", path, params)
        if status is MISSING:
            # Without a recipient policy aiosmtpd would accept anyone: fail closed.
            status = "554 5.7.1 Relay access denied"
        await self.push(status)


def _unstuff(lines: bytes) -> bytes:
    """Remove the leading dot of each line (RFC 5321 4.5.2); ``lines`` ends with CRLF."""
    if lines[:1] == b".":
        lines = lines[1:]
    return lines.replace(b"\r\n.", b"\r\n")


def _consume_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


def _mechanism_order(name: str) -> tuple[bool, str]:
    return (name != "PLAIN", name)
