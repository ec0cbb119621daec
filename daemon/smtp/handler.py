"""The SMTP handler: translates a session into calls on the relay service.

Replies, and why:

- MAIL: ``250 2.1.0 Ok``; a malformed sender ``553 5.1.7``; ``421 4.3.2`` when
  the daemon is shutting down, or ``421 4.3.2 <message>`` in maintenance mode
  (new transactions are refused at MAIL; EHLO/NOOP keep answering).
- RCPT fails closed. A client that neither authenticated nor connects from
  ``smtp.trusted_networks`` gets ``554 5.7.1 Relay access denied``; with
  ``smtp.require_auth`` an unauthenticated client gets ``530 5.7.0``. For
  allowed clients the address policy of :mod:`daemon.core.relay` applies:
  routing tricks (``%``, ``!``, a second ``@``, also inside a quoted local part)
  get ``553 5.7.1``, other bad syntax ``553 5.1.3``; source routes are
  stripped. Otherwise ``250 2.1.5 Ok``.
- Mail to ``[bounces] domain`` is local delivery, taken from any client:
  ``bounces+<message id>@domain`` gets ``250``, any other address there
  ``550 5.1.1``; it is never queued but read as a DSN (daemon.engagement)
  and answered ``250 2.0.0 Ok: bounce processed``. Bounces and other
  recipients in one transaction get ``452 4.5.3`` for the second kind.
- DATA: ``250 2.0.0 Ok: queued as msg-...`` only after the message and its
  recipients are committed; content refused by :mod:`daemon.core.ingest`
  gets its 5xx; a failed write ``451 4.3.0``, a full disk or a queue at
  ``queue.max_depth`` ``452 4.3.1``, a daily quota used up ``452 4.5.3`` (also
  at the first RCPT, when the quota is already spent: a temporary refusal).
- AUTH PLAIN/LOGIN (offered only over TLS): username = workspace id and
  password = an API key of that workspace, whose mail then belongs to it
  whatever X-Workspace-ID says; or the admin token (compared in constant
  time) with any username, and the message's X-Workspace-ID applies.
  Failures get ``535 5.7.8``.

One log line per event on ``relayd.smtp``; never a password or a message body.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aiosmtpd.smtp import AuthResult, LoginPassword, Session, TLSSetupException

from daemon.config import Config
from daemon.core.ids import message_id, uuid4
from daemon.core.ingest import IngestRejected, Submission, build_message
from daemon.core.message import Recipient
from daemon.core.relay import (
    AddressRejected,
    IPNetwork,
    RelayDecision,
    check_address,
    is_local,
    local_recipient,
    mixes_local_and_relay,
    parse_networks,
    relay_decision,
)
from daemon.service import MaintenanceMode, NotAccepting, RelayService
from daemon.smtp.params import MailParams, RcptParams
from daemon.smtp.protocol import RelayEnvelope, RelaySMTP, names_for_aiosmtpd
from daemon.store import queue
from daemon.store.engine import StoreError
from daemon.tenancy import QuotaExceeded

log = logging.getLogger("relayd.smtp")

SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
OVER_QUOTA = "452 4.5.3 Daily sending quota exceeded, try again later"
QUEUE_FULL = "452 4.3.1 Queue is full, try again later"


@dataclass(frozen=True)
class SmtpIdentity:
    """Who authenticated: the AUTH username and, when the credential owns them, its workspace
    and (a per-user key) its user."""

    username: str
    workspace_id: str | None = None
    user_id: str | None = None


def peer_ip(session: Session) -> str:
    """The client's IP address as text ("" when unknown)."""
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


class RelayHandler:
    """aiosmtpd handler: relay permission, address policy, and durable enqueue on DATA."""

    def __dir__(self) -> Iterable[str]:
        # Only the hooks aiosmtpd looks for (see names_for_aiosmtpd).
        return names_for_aiosmtpd(type(self), ("handle_", "auth_"))

    def __init__(self, service: RelayService, hostname: str) -> None:
        self.service = service
        self.hostname = hostname
        self._networks_for: Config | None = None
        self._networks: tuple[IPNetwork, ...] = ()
        self._decisions: dict[tuple[str, bool], RelayDecision] = {}

    def _trusted_networks(self) -> tuple[IPNetwork, ...]:
        # The config can change on SIGHUP; parse its networks once per Config object.
        config = self.service.config
        if config is not self._networks_for:
            self._networks = parse_networks(config.smtp.trusted_networks)
            self._decisions = {}
            self._networks_for = config
        return self._networks

    def _relay_decision(self, config: Config, ip: str, authenticated: bool) -> RelayDecision:
        # Asked at every RCPT for the same few peers: remembered per Config object.
        networks = self._trusted_networks()
        key = (ip, authenticated)
        decision = self._decisions.get(key)
        if decision is None:
            if len(self._decisions) >= 4096:
                self._decisions.clear()
            decision = relay_decision(ip, authenticated, networks, config.smtp.require_auth)
            self._decisions[key] = decision
        return decision

    async def verify_credentials(
        self, session: Session, mechanism: str, credentials: LoginPassword
    ) -> AuthResult:
        """AUTH PLAIN/LOGIN: the admin token, or a workspace API key with its workspace id."""
        username = credentials.login.decode("utf-8", "replace")
        password = credentials.password.decode("utf-8", "surrogateescape")
        token = self.service.admin_token
        identity: SmtpIdentity | None = None
        if token and hmac.compare_digest(credentials.password, token.encode()):
            identity = SmtpIdentity(username=username)
        elif password:
            key = await self.service.tenancy.identify_key(password)
            if key is not None and hmac.compare_digest(
                key.workspace_id.encode(), credentials.login
            ):
                identity = SmtpIdentity(username, key.workspace_id, key.user_id)
        ip = peer_ip(session)
        if identity is None:
            log.warning("auth failed user=%r mechanism=%s peer=%s", username, mechanism, ip)
            return AuthResult(success=False, handled=False)
        log.info("auth ok user=%r mechanism=%s peer=%s", username, mechanism, ip)
        return AuthResult(success=True, auth_data=identity)

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: RelayEnvelope,
        address: str,
        params: MailParams,
    ) -> str:
        if not self.service.accepting:
            return SHUTTING_DOWN
        if self.service.maintenance.enabled:
            log.info("sender refused (maintenance mode) peer=%s", peer_ip(session))
            return self.service.maintenance.smtp_reply()
        if address:  # "" is the null reverse path of bounces and DSNs
            try:
                address = check_address(address, role="sender")
            except AddressRejected as exc:
                log.info("sender refused peer=%s reply=%r", peer_ip(session), exc.reply)
                return exc.reply
        envelope.mail_from = address
        envelope.body = params.body
        envelope.dsn_ret = params.ret
        envelope.dsn_envid = params.envid
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: RelayEnvelope,
        address: str,
        params: RcptParams,
    ) -> str:
        config = self.service.config
        ip = peer_ip(session)
        # Mail to the VERP bounce domain is local delivery, taken from anyone (issue 7).
        domain = config.bounces.domain
        try:
            local = local_recipient(address, domain)
        except AddressRejected as exc:
            log.info("rcpt refused peer=%s reply=%r", ip, exc.reply)
            return exc.reply
        existing = [r.address for r in envelope.recipients]
        if domain and mixes_local_and_relay(existing, local is not None, domain):
            return "452 4.5.3 Send bounces and other mail in separate transactions"
        if local is not None:
            if local.lower() not in (a.lower() for a in existing):
                envelope.recipients.append(Recipient(local))
                envelope.rcpt_tos.append(local)
            return "250 2.1.5 Ok"
        decision = self._relay_decision(config, ip, bool(session.authenticated))
        if decision is RelayDecision.AUTH_REQUIRED:
            log.info("rcpt refused (auth required) peer=%s to=<%s>", ip, address)
            return "530 5.7.0 Authentication required"
        if decision is not RelayDecision.ALLOWED:
            log.info("relay denied peer=%s to=<%s>", ip, address)
            return "554 5.7.1 Relay access denied"
        try:
            final = check_address(address)
        except AddressRejected as exc:
            log.info("rcpt refused peer=%s reply=%r", ip, exc.reply)
            return exc.reply
        if not envelope.recipients:  # one look per transaction: is today's quota used up?
            identity = session.auth_data if isinstance(session.auth_data, SmtpIdentity) else None
            if await self.service.tenancy.quota_left(identity.workspace_id if identity else None):
                log.info("rcpt refused (daily quota used up) peer=%s to=<%s>", ip, final)
                return OVER_QUOTA
        if final.lower() not in (r.address.lower() for r in envelope.recipients):
            envelope.recipients.append(Recipient(final, params.notify, params.orcpt))
            envelope.rcpt_tos.append(final)
        return "250 2.1.5 Ok"

    async def handle_DATA(
        self, server: RelaySMTP, session: Session, envelope: RelayEnvelope
    ) -> str:
        if not self.service.accepting:
            return SHUTTING_DOWN
        started = time.monotonic()
        config = self.service.config
        domain = config.bounces.domain
        if domain and envelope.recipients and is_local(envelope.recipients[0].address, domain):
            found = await self.service.engagement.bounce_mail(
                envelope.original_content or b"", [r.address for r in envelope.recipients]
            )
            log.info("bounce received peer=%s bounces=%d", peer_ip(session), found)
            return "250 2.0.0 Ok: bounce processed"
        now = self.service.clock()
        identity = session.auth_data if isinstance(session.auth_data, SmtpIdentity) else None
        submission = Submission(
            mail_from=envelope.mail_from or "",
            recipients=tuple(envelope.recipients),
            peer_ip=peer_ip(session),
            helo=session.host_name or "",
            tls=server.tls_active,
            authenticated=bool(session.authenticated),
            auth_workspace=identity.workspace_id if identity else None,
            auth_user=identity.user_id if identity else None,
            dsn_ret=envelope.dsn_ret,
            dsn_envid=envelope.dsn_envid,
        )
        try:
            message = build_message(
                envelope.original_content or b"",
                submission,
                message_id=message_id(int(now.timestamp() * 1000)),
                uuid=uuid4(),
                now=now,
                hostname=self.hostname,
                bare_newline=config.smtp.bare_newline,
            )
        except IngestRejected as exc:
            log.info("message refused peer=%s reply=%r", submission.peer_ip, exc.reply)
            return exc.reply
        max_depth = config.queue.max_depth
        if max_depth and await self.service.reader.run(queue.pending_depth) >= max_depth:
            log.warning("message refused, queue full peer=%s", submission.peer_ip)
            return QUEUE_FULL
        try:
            await self.service.enqueue(message)
        except QuotaExceeded as exc:
            log.info("message refused, %s peer=%s", exc, submission.peer_ip)
            return OVER_QUOTA
        except MaintenanceMode as exc:
            return exc.state.smtp_reply()
        except NotAccepting:
            return SHUTTING_DOWN
        except StoreError as exc:
            if exc.disk_full:
                log.warning("message refused, disk full peer=%s", submission.peer_ip)
                return "452 4.3.1 Insufficient system storage, try again later"
            log.warning("message refused, store error (%s) peer=%s", exc, submission.peer_ip)
            return "451 4.3.0 Local error in processing, try again later"
        log.info(
            "queued %s from=<%s> rcpts=%d size=%d peer=%s workspace=%s",
            message.id,
            message.mail_from,
            len(message.recipients),
            len(message.raw),
            submission.peer_ip,
            message.workspace_id,
        )
        self.service.metrics.smtp_transaction(time.monotonic() - started)
        return f"250 2.0.0 Ok: queued as {message.id}"

    async def handle_exception(self, error: Exception) -> str:
        """Unexpected errors end the command with a 451, never a traceback to the client."""
        if isinstance(error, TLSSetupException):
            log.info("TLS handshake failed: %s", error.__cause__ or error)
            return "454 4.7.0 TLS not available due to temporary reason"
        log.exception("unexpected error in SMTP session")
        return "451 4.3.0 Local error in processing, try again later"
