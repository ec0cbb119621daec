"""Whatever JSON a client sends to POST /api/messages, the answer is never a 500."""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daemon.api.send_request import FIELDS
from tests.api.conftest import message

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
addresses = st.sampled_from(
    ["a@example.com", "Name <b@example.org>", "bad", "", "x@localhost", "\u00e9@example.com"]
) | st.text(max_size=30)
# Mostly the real field names, with plausible and junk values, so validation goes deep.
plausible = st.fixed_dictionaries(
    {},
    optional={
        "from": addresses | junk,
        "to": st.lists(addresses, max_size=3) | junk,
        "cc": st.lists(addresses, max_size=2) | junk,
        "bcc": st.lists(addresses, max_size=2) | junk,
        "subject": st.text(max_size=40) | junk,
        "text_body": st.text(max_size=80) | junk,
        "html_body": st.text(max_size=80) | junk,
        "headers": st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=3) | junk,
        "attachments": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "filename": st.text(max_size=12) | junk,
                    "content_type": st.text(max_size=20) | junk,
                    "content": st.sampled_from(["aGk=", "", "!!", "aGk"]) | junk,
                },
            ),
            max_size=2,
        )
        | junk,
        "workspace_id": st.text(max_size=12) | junk,
        "campaign_id": st.text(max_size=12) | junk,
        "metadata": junk,
        "personalization": junk,
        "scheduling": st.fixed_dictionaries(
            {},
            optional={
                "send_at": st.sampled_from(["2030-01-01T00:00:00Z", "2020-01-01", "x"]) | junk,
                "timezone": st.sampled_from(["UTC", "Europe/Paris", "Nope/Zone", "../etc"]) | junk,
            },
        )
        | junk,
    },
)
bodies = plausible | junk | st.dictionaries(st.sampled_from(sorted(FIELDS)), junk, max_size=6)


def check(response: httpx.Response) -> None:
    assert response.status_code in (202, 400, 403, 413), response.text
    body: dict[str, Any] = response.json()
    if response.status_code == 202:
        assert body["data"]["status"] in ("queued", "scheduled")
    else:
        assert body["success"] is False
        assert body["error"]["code"] in (
            "INVALID_REQUEST",
            "MISSING_REQUIRED_FIELD",
            "INVALID_EMAIL_FORMAT",
            "MESSAGE_TOO_LARGE",
        )


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=bodies)
async def test_junk_json_never_answers_500(client: httpx.AsyncClient, body: Any) -> None:
    check(await client.post("/api/messages", json=body))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=plausible)
async def test_valid_message_with_junk_fields_never_answers_500(
    client: httpx.AsyncClient, changes: dict[str, Any]
) -> None:
    response = await client.post("/api/messages", json=message(**changes))
    event(f"status {response.status_code}")
    check(response)
    if response.status_code == 202:
        shown = await client.get(f"/api/messages/{response.json()['data']['message_id']}")
        assert shown.status_code == 200


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=st.binary(max_size=200))
async def test_junk_bytes_never_answer_500(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post(
        "/api/messages", content=raw, headers={"Content-Type": "application/json"}
    )
    check(response)
