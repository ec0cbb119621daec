"""Suppression policy: recipients whose status is not ACTIVE get no mail.

Delivery looks up the suppressed addresses of a claimed batch (one query) and
applies these pure functions: the suppressed recipients are taken out before
any provider sees the message, and recorded with status ``suppressed`` and the
reason; a message left with no recipient ends ``failed`` with that reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime

from daemon.core.message import ClaimedMessage, Outcome

SUPPRESSED = "suppressed"

Suppressed = tuple[tuple[str, str], ...]  # (address, reason)


def split(
    message: ClaimedMessage, found: Mapping[tuple[str, str], str]
) -> tuple[ClaimedMessage, Suppressed]:
    """The message without its suppressed recipients, and those recipients with why.

    ``found`` maps (workspace_id, lower-cased address) to a reason.
    """
    keep = []
    dropped = []
    for rcpt in message.recipients:
        reason = found.get((message.workspace_id, rcpt.address.lower()))
        if reason is None:
            keep.append(rcpt)
        else:
            dropped.append((rcpt.address, reason))
    if not dropped:
        return message, ()
    return dataclasses.replace(message, recipients=keep), tuple(dropped)


def _error(suppressed: Suppressed) -> str:
    return "; ".join(f"{address}: {reason}" for address, reason in suppressed)


def all_suppressed(message: ClaimedMessage, suppressed: Suppressed, now: datetime) -> Outcome:
    """The outcome of a message every recipient of which is suppressed: failed, with why."""
    return Outcome(
        message_id=message.id,
        lease_owner=message.lease_owner,
        status="failed",
        processed_at=now,
        retry_count=message.retry_count,
        error=_error(suppressed)[:2000],
        recipient_status=tuple((a, SUPPRESSED, r) for a, r in suppressed),
    )


def merge(outcome: Outcome, suppressed: Sequence[tuple[str, str]]) -> Outcome:
    """Add the suppressed recipients to the outcome of delivering the others."""
    if not suppressed:
        return outcome
    error = "; ".join(p for p in (outcome.error, _error(tuple(suppressed))) if p)
    return dataclasses.replace(
        outcome,
        error=error[:2000],
        recipient_status=(
            *outcome.recipient_status,
            *((a, SUPPRESSED, r) for a, r in suppressed),
        ),
    )
