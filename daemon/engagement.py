"""The engagement loop: tracking rewrites before delivery, and every event coming back.

``service.engagement`` is what the delivery workers, the SMTP listener (mail to
the bounce domain) and the ``/webhook/*`` endpoints call. Events from every
source become :class:`daemon.store.events.EngagementEvent` and are applied in
one transaction each batch (daemon.store.events).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection

from daemon.config import Config
from daemon.core import bounces, mandrill, rewriter, tracking
from daemon.core.message import ClaimedMessage, Outcome
from daemon.core.retry import enhanced_code
from daemon.private import read_private
from daemon.store import engagement as tables
from daemon.store import queue
from daemon.store.events import Applied, BounceRules, EngagementEvent, apply_event

if TYPE_CHECKING:
    from daemon.service import RelayService

log = logging.getLogger("relayd.engagement")

SECRET_FILE = "tracking.secret"


def resolve_secret(config: Config) -> bytes:
    """The tracking secret from config, its file, or one generated once into data_dir (0600)."""
    section = config.tracking
    if section.secret:
        return section.secret.encode()
    if section.secret_file:
        return Path(section.secret_file).read_text().strip().encode()
    path = config.data_path / SECRET_FILE
    if path.exists():
        return read_private(path).encode()
    config.data_path.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another daemon on this data_dir made it first
        return read_private(path).encode()
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    log.info("generated tracking secret in %s", path)
    return value.encode()


class Engagement:
    """Tracking, unsubscribe, bounces and provider events for one RelayService."""

    def __init__(self, service: RelayService) -> None:
        self.service = service
        self.public_url: str | None = None  # the HTTP listener's URL, set once it is bound
        self.deliveries_waiting: asyncio.Event | None = None  # set by the webhook sender
        self._secret: bytes | None = None

    @property
    def secret(self) -> bytes:
        if self._secret is None:
            self._secret = resolve_secret(self.service.config)
        return self._secret

    def base_url(self) -> str:
        config = self.service.config
        if config.tracking.base_url:
            return config.tracking.base_url.rstrip("/")
        if self.public_url:
            return self.public_url
        return f"http://{config.http.host}:{config.http.port}"

    def rules(self) -> BounceRules:
        b = self.service.config.bounces
        return BounceRules(b.soft_bounce_threshold, b.soft_bounce_window_days)

    async def record(self, events: Sequence[EngagementEvent]) -> list[Applied]:
        """Apply events in one transaction; replays come back with ``new=False``."""
        if not events:
            return []
        rules = self.rules()
        applied = await self.service.committer.run(
            lambda c: [apply_event(c, e, rules) for e in events]
        )
        self._kick(any(a.new for a in applied))
        return applied

    def _kick(self, new: bool) -> None:
        if new and self.deliveries_waiting is not None:
            self.deliveries_waiting.set()

    # -- tracking pixel, links and unsubscribe ------------------------------------------

    async def track(
        self, kind: str, mid: str, rid: str, url: str | None = None, extra: Any = None
    ) -> bool:
        """Record an open or click of a tracked message; False for an unknown message/rid."""
        now, rules = self.service.clock(), self.rules()
        data = dict(extra or {}, rid=rid)

        def run(conn: Connection) -> Applied | None:
            row = tables.tracking_rows(conn, [mid]).get(mid)
            if row is None or row.rid != rid:
                return None
            event = EngagementEvent(
                type=kind,
                workspace_id=row.workspace_id,
                email=row.recipient,
                at=now,
                source="tracking",
                message_id=mid,
                campaign_id=row.campaign_id,
                url=url,
                data=data,
            )
            return apply_event(conn, event, rules)

        applied = await self.service.committer.run(run)
        self._kick(applied is not None)
        return applied is not None

    async def tracked(self, mid: str) -> Any:
        """The tracking row of a message, or None."""
        return (await self.service.reader.run(lambda c: tables.tracking_rows(c, [mid]))).get(mid)

    async def unsubscribe(
        self, row: Any, email: str, reason: str, extra: dict[str, Any]
    ) -> Applied:
        """Mark the recipient UNSUBSCRIBED in the message's workspace and record why."""
        event = EngagementEvent(
            type="unsubscribed",
            workspace_id=row.workspace_id,
            email=email,
            at=self.service.clock(),
            source="unsubscribe",
            message_id=row.message_id,
            campaign_id=row.campaign_id,
            reason=reason,
            data=extra,
        )
        return (await self.record([event]))[0]

    # -- before the first delivery attempt ------------------------------------------------

    async def prepare(self, message: ClaimedMessage) -> ClaimedMessage:
        """The message as it must go out: rewritten once (persisted) and its return path."""
        config = self.service.config
        if not message.mail_from:  # the null sender: bounces are never rewritten
            return message
        domain = config.bounces.domain
        verp = bounces.verp_address(message.id, domain) if domain else None
        t = config.tracking
        plan = tracking.plan_for(
            enabled=t.enabled,
            open_tracking=t.open_tracking,
            click_tracking=t.click_tracking,
            list_unsubscribe=t.list_unsubscribe,
            overrides=t.workspaces,
            workspace_id=message.workspace_id,
            is_campaign=message.campaign_id is not None,
        )
        if not plan.rewrites:
            return dataclasses.replace(message, return_path=verp) if verp else message
        known = await self.service.reader.run(lambda c: _known(c, message))
        if isinstance(known, tuple):
            row, stored_raw = known
            return dataclasses.replace(message, raw=stored_raw, return_path=row.return_path)
        facts = known
        if facts["source"] == "dsn":
            return message
        rid = str(facts["recipient_id"]) if facts["recipient_id"] else secrets.token_hex(8)
        try:
            new_raw: bytes | None = self._rewrite(message, plan, rid)
        except Exception:
            # Mail the rewrite cannot handle goes out as accepted, never stuck in retries.
            log.exception("could not rewrite %s for tracking; delivering it unchanged", message.id)
            new_raw = None
        values = {
            "message_id": message.id,
            "workspace_id": message.workspace_id,
            "campaign_id": message.campaign_id,
            "rid": rid,
            "recipient": facts["recipient"],
            "recipient_id": facts["recipient_id"],
            "return_path": verp,
            "prepared_at": self.service.clock(),
        }
        row = await self.service.committer.run(lambda c: tables.save_prepared(c, values, new_raw))
        raw = new_raw
        if raw is None or row.rid != rid:  # unchanged, or prepared meanwhile by another worker
            stored = await self.service.reader.run(lambda c: queue.get_raw(c, message.id))
            raw = stored or message.raw
        return dataclasses.replace(message, raw=raw, return_path=row.return_path)

    def _rewrite(self, message: ClaimedMessage, plan: tracking.TrackingPlan, rid: str) -> bytes:
        base, secret, mid = self.base_url(), self.secret, message.id
        headers: list[tuple[str, str]] = []
        if plan.list_unsubscribe and b"\nlist-unsubscribe:" not in message.raw[:65536].lower():
            url = tracking.unsubscribe_url(base, tracking.unsubscribe_token(secret, mid, rid))
            domain = self.service.config.bounces.domain
            value = f"<{url}>"
            if domain:
                value += f", <mailto:{bounces.verp_address(mid, domain)}?subject=unsubscribe>"
            headers = [
                ("List-Unsubscribe", value),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ]
        return rewriter.rewrite_message(
            message.raw,
            pixel_url=tracking.pixel_url(base, mid, rid) if plan.opens else None,
            link=(lambda u: tracking.click_url(base, secret, mid, rid, u)) if plan.clicks else None,
            add_headers=headers,
        )

    # -- after a delivery attempt ---------------------------------------------------------

    async def after_delivery(self, message: ClaimedMessage, outcome: Outcome) -> None:
        """Recipients a provider refused for good feed the bounce pipeline."""
        failed = [(a, r) for a, status, r in outcome.recipient_status if status == "failed"]
        if not failed:
            return
        permanent = any(a.outcome == "permanent" for a in outcome.attempts)
        events = []
        for address, reply in failed:
            code = enhanced_code(reply or "") or ""
            if not code and reply and reply[:3].isdigit():
                code = f"{reply[0]}.0.0"
            kind = bounces.kind_of(code) or (bounces.HARD if permanent else bounces.SOFT)
            events.append(
                EngagementEvent(
                    type="bounced" if kind == bounces.HARD else "soft_bounced",
                    workspace_id=message.workspace_id,
                    email=address,
                    at=outcome.processed_at,
                    source="provider",
                    message_id=message.id,
                    campaign_id=message.campaign_id,
                    reason=(reply or "")[:1000] or None,
                    dedupe_key=f"provider:{message.id}:{address.lower()}:{outcome.retry_count}",
                    data={"bounce_type": kind, "status": code or None},
                    count_campaign=False,
                )
            )
        try:
            await self.record(events)
        except Exception as exc:
            log.warning("could not record bounces of %s: %s", message.id, exc)

    # -- mail to the bounce domain ----------------------------------------------------------

    async def bounce_mail(self, raw: bytes, rcpts: Sequence[str]) -> int:
        """A DSN sent to ``bounces+<id>@domain``: record its hard and soft bounces."""
        domain = self.service.config.bounces.domain
        ids = [i for i in (bounces.verp_message_id(r, domain) for r in rcpts) if i]
        reported, original = bounces.parse_dsn(raw)
        if not ids and original:
            ids = [original]
        if ids and not reported and bounces.asks_to_unsubscribe(raw):
            return await self._mailto_unsubscribe(ids[0], raw)
        if not ids or not reported:
            return 0
        message = await self.service.reader.run(lambda c: tables.get_message(c, ids[0]))
        if message is None:
            log.info("bounce for unknown message %s ignored", ids[0])
            return 0
        digest = hashlib.sha256(raw).hexdigest()[:32]
        now = self.service.clock()
        events = [
            EngagementEvent(
                type="bounced" if b.kind == bounces.HARD else "soft_bounced",
                workspace_id=message.workspace_id,
                email=b.recipient,
                at=now,
                source="dsn",
                message_id=message.id,
                campaign_id=message.campaign_id,
                reason=f"{b.status} {b.diagnostic}".strip()[:1000],
                dedupe_key=f"dsn:{digest}:{b.recipient.lower()}"[:200],
                data={"bounce_type": b.kind, "status": b.status},
                message_status="failed" if b.kind == bounces.HARD else None,
            )
            for b in reported
        ]
        applied = await self.record(events)
        return sum(1 for a in applied if a.new)

    async def _mailto_unsubscribe(self, mid: str, raw: bytes) -> int:
        """The List-Unsubscribe mailto: from the message's own recipient, for that message."""
        row = await self.tracked(mid)
        sender = bounces.sender_of(raw)
        if row is None or row.recipient is None or sender != row.recipient:
            log.info("unsubscribe mail for %s ignored: not from its recipient", mid)
            return 0
        applied = await self.unsubscribe(row, row.recipient, "mailto unsubscribe", {})
        return int(applied.new)

    # -- Mandrill -----------------------------------------------------------------------

    async def mandrill(self, items: Sequence[Any]) -> dict[str, int]:
        """Apply a batch of Mandrill events; counts of applied, duplicate and skipped ones."""
        now = self.service.clock()
        read: list[mandrill.MandrillEvent] = []
        skipped = 0
        for item in items:
            try:
                read.append(mandrill.read_event(item, now))
            except mandrill.BadEvent as exc:
                skipped += 1
                log.info("mandrill event skipped: %s", exc)
        rules = self.rules()
        results = await self.service.committer.run(
            lambda c: [_apply_mandrill(c, e, now, rules) for e in read]
        )
        applied = sum(1 for r in results if r)
        self._kick(applied > 0)
        return {"applied": applied, "duplicates": len(results) - applied, "skipped": skipped}


def _known(conn: Connection, message: ClaimedMessage) -> tuple[Any, bytes] | dict[str, Any]:
    """The stored rewrite when the message was prepared, else what preparing it needs."""
    rows = tables.tracking_rows(conn, [message.id])
    if message.id in rows:
        raw = queue.get_raw(conn, message.id)
        return rows[message.id], raw if raw is not None else message.raw
    row, addresses = tables.message_facts(conn, message.id)
    single = addresses[0] if len(addresses) == 1 else None
    return {
        "source": row.source if row is not None else "api",
        "recipient": single.lower() if single else None,
        "recipient_id": tables.recipient_id(conn, message.workspace_id, single) if single else None,
    }


def _apply_mandrill(
    conn: Connection, ev: mandrill.MandrillEvent, now: Any, rules: BounceRules
) -> bool:
    kind, status = mandrill.EVENT_MAP[ev.event]
    message = tables.get_message(conn, ev.message_id)
    if not tables.insert_webhook_event(
        conn,
        {
            "source": "mandrill",
            "event": ev.event,
            "message_id": ev.message_id,
            "dedupe_key": ev.dedupe_key,
            "payload": dict(ev.raw),
            "received_at": now,
        },
    ):
        return False
    workspace_id = message.workspace_id if message is not None else ev.workspace_id or "default"
    campaign_id = message.campaign_id if message is not None else ev.campaign_id
    bounce_type = {"bounced": "hard", "soft_bounced": "soft", "rejected": "reject"}.get(kind)
    event = EngagementEvent(
        type=kind,
        workspace_id=workspace_id,
        email=ev.email,
        at=ev.at,
        source="mandrill",
        message_id=message.id if message is not None else None,
        campaign_id=campaign_id,
        url=ev.url if kind == "clicked" and tracking.is_web_url(ev.url) else None,
        reason=ev.reason
        or (
            f"mandrill {ev.event}"
            if bounce_type or kind in ("unsubscribed", "complained")
            else None
        ),
        dedupe_key=ev.dedupe_key,
        data={"mandrill_event": ev.event, "bounce_type": bounce_type, "status": ev.bounce_status},
        message_status=status if message is not None else None,
    )
    return apply_event(conn, event, rules).new
