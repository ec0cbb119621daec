"""The one small async interface every delivery provider implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, runtime_checkable

from daemon.core.message import ClaimedMessage, Recipient
from daemon.core.retry import AUTH_ERROR, KINDS, PERMANENT, SENT, TEMPORARY

T = TypeVar("T")

# The slowest upload a provider waits for, in bytes per second (256 kbit/s). A provider's
# ``timeout`` bounds each exchange as a whole; sending a message is allowed that plus its
# size at this rate (:func:`upload_budget`), so a large message on a slow link is not cut
# short, while an upload that stalls still ends.
MIN_UPLOAD_RATE = 32 * 1024


def upload_budget(timeout: float, size: int, rate: float = MIN_UPLOAD_RATE) -> float:
    """Seconds to send ``size`` bytes: the provider's ``timeout`` plus ``size`` at ``rate``."""
    return timeout + max(size, 0) / rate


@dataclass(frozen=True)
class Envelope:
    """What a provider needs to deliver one message to some of its recipients."""

    id: str
    mail_from: str
    recipients: Sequence[Recipient]
    raw: bytes
    dsn_ret: str | None = None
    dsn_envid: str | None = None

    @classmethod
    def of(cls, message: ClaimedMessage, recipients: Sequence[Recipient] | None = None) -> Envelope:
        """The envelope of a claimed message, optionally for a subset of its recipients."""
        return cls(
            id=message.id,
            mail_from=message.return_path or message.mail_from,
            recipients=list(message.recipients if recipients is None else recipients),
            raw=message.raw,
            dsn_ret=message.dsn_ret,
            dsn_envid=message.dsn_envid,
        )


@dataclass(frozen=True)
class RecipientResult:
    """What happened to one recipient: sent, temporary, permanent or auth_error."""

    address: str
    outcome: str
    code: int | None = None
    reply: str = ""


@dataclass(frozen=True)
class DeliveryResult:
    """The result of one ``send``: overall outcome plus one entry per recipient.

    ``outcome`` is ``sent`` when at least one recipient was accepted; the
    per-recipient results then say which ones were refused (a partial delivery).
    """

    outcome: str
    recipients: tuple[RecipientResult, ...]
    code: int | None = None
    reply: str = ""
    provider_message_id: str | None = None
    remote: str | None = None  # the remote host, for the DSN's Remote-MTA field
    dsn_relayed: bool = False  # the next hop took over the RFC 3461 DSN parameters
    # Seconds the provider asked us to wait before calling it again (Retry-After,
    # X-RateLimit-Reset): a deferred message's next attempt comes no sooner.
    retry_in: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in KINDS:
            raise ValueError(f"unknown delivery outcome {self.outcome!r}")

    @classmethod
    def uniform(
        cls,
        outcome: str,
        recipients: Sequence[Recipient],
        code: int | None = None,
        reply: str = "",
        provider_message_id: str | None = None,
        remote: str | None = None,
        retry_in: float | None = None,
    ) -> DeliveryResult:
        """The same outcome for every recipient (APIs and whole-transaction failures)."""
        return cls(
            outcome=outcome,
            recipients=tuple(RecipientResult(r.address, outcome, code, reply) for r in recipients),
            code=code,
            reply=reply,
            provider_message_id=provider_message_id,
            remote=remote,
            retry_in=retry_in,
        )

    def by_outcome(self, outcome: str) -> list[RecipientResult]:
        return [r for r in self.recipients if r.outcome == outcome]

    @classmethod
    def merge(cls, results: Sequence[DeliveryResult]) -> DeliveryResult:
        """One result for a message sent in several requests (an API's recipient limit).

        Sent when any batch was sent (the others are a partial delivery, per
        recipient); the code, reply and ids are those of the first sent batch,
        else of the first batch; the wait asked for is the longest any batch was told.
        """
        if len(results) == 1:
            return results[0]
        outcome = combine([r.outcome for r in results])
        lead = next((r for r in results if r.outcome == SENT), results[0])
        return cls(
            outcome=outcome,
            recipients=tuple(rr for r in results for rr in r.recipients),
            code=lead.code,
            reply=lead.reply,
            provider_message_id=lead.provider_message_id,
            remote=lead.remote,
            dsn_relayed=lead.dsn_relayed,
            retry_in=max((r.retry_in for r in results if r.retry_in), default=None),
        )


def combine(kinds: Sequence[str]) -> str:
    """One outcome for several recipients: any accepted wins, then retryable ones."""
    if SENT in kinds:
        return SENT
    if TEMPORARY in kinds:
        return TEMPORARY
    if AUTH_ERROR in kinds:
        return AUTH_ERROR
    return PERMANENT


def batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)] or [items]


@dataclass(frozen=True)
class HealthResult:
    """A provider's cheap health check: healthy or not, how long it took, and why not."""

    healthy: bool
    latency_ms: int
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "healthy" if self.healthy else "unhealthy"


@runtime_checkable
class Provider(Protocol):
    """A delivery provider: one instance per ``[providers.<id>]`` section."""

    id: str
    type: str

    async def send(self, envelope: Envelope) -> DeliveryResult:
        """Hand the message to the provider; never raises for delivery failures."""
        ...

    async def check(self) -> HealthResult:
        """A cheap check that the provider is reachable and accepts our credentials."""
        ...

    async def close(self) -> None:
        """Release connections and other resources."""
        ...


__all__ = [
    "AUTH_ERROR",
    "MIN_UPLOAD_RATE",
    "PERMANENT",
    "SENT",
    "TEMPORARY",
    "DeliveryResult",
    "Envelope",
    "HealthResult",
    "Provider",
    "RecipientResult",
    "upload_budget",
]
