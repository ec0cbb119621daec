"""``relayctl send --csv``: one personalized message per CSV row."""

from __future__ import annotations

from typing import Any

from relayctl.batch import run_rows, summarize
from relayctl.client import Client
from relayctl.output import Output


def send_rows(
    client: Client,
    out: Output,
    fields: dict[str, Any],
    variables: dict[str, Any],
    rows: list[dict[str, str]],
) -> int:
    """Send to each row's ``email`` with the row's columns as template variables.

    Returns the exit code: 0 all accepted, 6 some refused, 1 all refused.
    """

    def send(row: dict[str, str]) -> str:
        personal = {**variables, **{k: v for k, v in row.items() if k}}
        body = {key: value for key, value in fields.items() if key not in ("to", "cc", "bcc")}
        result = client.send_message(
            to=[row.get("email", "")],
            personalization={"enabled": True, "variables": personal},
            **body,
        )
        return result.message_id

    results = run_rows(out, "sending", rows, send)
    return summarize(out, results, "accepted", "refused", "message_id")
