"""The pure parts: signed tracking URLs and tokens, the HTML rewrite, DSN reading, VERP,
Mandrill's signature, outbound signatures and the address policy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from daemon.core import bounces, mandrill, rewriter, tracking, webhooks
from daemon.core.relay import AddressRejected, local_recipient

KEY = b"k" * 32


def test_click_urls_verify_only_unchanged() -> None:
    url = tracking.click_url("https://t.example/", KEY, "msg-1", "42", "https://a.example/?q=1")
    assert url.startswith("https://t.example/webhook/click?mid=msg-1&rid=42&url=https%3A%2F%2F")
    sig = tracking.sign(KEY, "click", "msg-1", "42", "https://a.example/?q=1")
    assert tracking.verify_click(KEY, "msg-1", "42", "https://a.example/?q=1", sig)
    assert not tracking.verify_click(KEY, "msg-1", "43", "https://a.example/?q=1", sig)
    assert not tracking.verify_click(KEY, "msg-1", "42", "https://a.example/?q=2", sig)
    assert not tracking.verify_click(b"other", "msg-1", "42", "https://a.example/?q=1", sig)
    # Length-prefixed parts: moving characters between mid and rid changes the signature.
    assert not tracking.verify_click(KEY, "msg-14", "2", "https://a.example/?q=1", sig)
    for bad in (None, "", "x" * 100, "\udcff"):
        assert not tracking.verify_click(KEY, "msg-1", "42", "https://a.example/?q=1", bad)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("https://a.example/x", True),
        ("HTTP://A.EXAMPLE", True),
        ("javascript:alert(1)", False),
        ("data:text/html,x", False),
        ("//evil.example/", False),
        ("/relative", False),
        ("https:///nohost", False),
        ("https://a.example/\x00", False),
        ("mailto:a@b.c", False),
    ],
)
def test_web_urls(url: str, ok: bool) -> None:
    assert tracking.is_web_url(url) is ok


def test_unsubscribe_tokens() -> None:
    token = tracking.unsubscribe_token(KEY, "msg-ABC", "7")
    assert tracking.read_unsubscribe_token(KEY, token) == ("msg-ABC", "7")
    assert tracking.read_unsubscribe_token(b"x", token) is None
    assert tracking.read_unsubscribe_token(KEY, token.replace(".7.", ".8.")) is None
    for bad in (None, "", "a", "a.b", "..", "a.b.c.d", "x" * 400):
        assert tracking.read_unsubscribe_token(KEY, bad) is None


def test_plan_overrides() -> None:
    common = {"enabled": True, "open_tracking": True, "click_tracking": True}
    plan = tracking.plan_for(
        **common,
        list_unsubscribe=True,
        overrides=["ws-2=opens"],
        workspace_id="ws-1",
        is_campaign=True,
    )
    assert (plan.opens, plan.clicks, plan.list_unsubscribe) == (True, True, True)
    plan = tracking.plan_for(
        **common,
        list_unsubscribe=True,
        overrides=["ws-1=opens"],
        workspace_id="ws-1",
        is_campaign=False,
    )
    assert (plan.opens, plan.clicks, plan.list_unsubscribe) == (True, False, False)
    off = tracking.plan_for(
        **common,
        list_unsubscribe=True,
        overrides=["ws-1=off"],
        workspace_id="ws-1",
        is_campaign=True,
    )
    assert not off.rewrites
    assert not tracking.plan_for(
        enabled=False,
        open_tracking=True,
        click_tracking=True,
        list_unsubscribe=True,
        overrides=[],
        workspace_id="ws",
        is_campaign=True,
    ).rewrites


def test_html_rewrite_keeps_what_is_not_a_web_link() -> None:
    html = (
        "<html><body><a href='https://a.example/?x=1&amp;y=2'>a</a><a href=mailto:x@y.z>m</a>"
        '<a name="top" href="#top">t</a><area href="http://b.example/"><p>https://c.example/</p>'
        "<a class=x>no href</a></body></html>"
    )
    out = rewriter.rewrite_html(html, "https://t/p?a=1&b=2", lambda u: "https://t/c?u=" + u)
    assert 'href="https://t/c?u=https://a.example/?x=1&amp;y=2"' in out
    assert "href=mailto:x@y.z" in out and 'href="#top"' in out
    assert 'href="https://t/c?u=http://b.example/"' in out
    assert "<p>https://c.example/</p>" in out  # text is not a link
    assert out.endswith(
        '<img src="https://t/p?a=1&amp;b=2" width="1" height="1" alt="" '
        'style="border:0;width:1px;height:1px" /></body></html>'
    )


def test_message_without_html_is_untouched_but_for_headers() -> None:
    raw = b"From: a@b.c\r\nTo: d@e.f\r\nSubject: x\r\n\r\nhttps://a.example/\r\n"
    assert rewriter.rewrite_message(raw, pixel_url="https://t/p", link=lambda u: "X") == raw
    added = rewriter.rewrite_message(raw, add_headers=[("List-Unsubscribe", "<https://u>")])
    assert added == b"List-Unsubscribe: <https://u>\r\n" + raw


DSN = (
    b"From: MAILER-DAEMON@mx\r\nContent-Type: multipart/report; report-type=delivery-status;"
    b' boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n--b\r\n'
    b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n"
    b"Final-Recipient: rfc822; a@x.example\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n\r\n"
    b"Final-Recipient: rfc822; b@x.example\r\nAction: delayed\r\nStatus: 4.4.1\r\n\r\n"
    b"Final-Recipient: rfc822; c@x.example\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n"
    b"Final-Recipient: rfc822; d@x.example\r\nAction: failed\r\nStatus: 5.0.0\r\n"
    b"Diagnostic-Code: smtp; 552 5.2.2 mailbox full\r\n\r\n"
    b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <msg-1@relay>\r\n\r\n--b--\r\n"
)


def test_parse_dsn() -> None:
    found, original = bounces.parse_dsn(DSN)
    assert [(b.recipient, b.kind, b.status) for b in found] == [
        ("a@x.example", "hard", "5.1.1"),
        ("b@x.example", "soft", "4.4.1"),
        ("d@x.example", "hard", "5.0.0"),
    ]
    assert found[0].diagnostic == "550 5.1.1 no such user"
    assert original == "msg-1"
    assert bounces.parse_dsn(b"not a dsn at all") == ([], None)
    assert bounces.parse_dsn(b"\xff\xfe\x00garbage") == ([], None)


def test_verp() -> None:
    mid = "msg-01ARZ3NDEKTSV4RRFFQ69G5FAV"
    address = bounces.verp_address(mid, "b.example")
    assert address == f"bounces+{mid}@b.example"
    assert bounces.verp_message_id(address.lower(), "B.example") == mid
    assert bounces.verp_message_id(address, "other.example") is None
    assert bounces.verp_message_id("postmaster@b.example", "b.example") is None
    assert local_recipient(f"<{address}>".strip("<>"), "b.example") == address
    assert local_recipient("x@elsewhere.example", "b.example") is None
    assert local_recipient(address, "") is None
    with pytest.raises(AddressRejected) as refused:
        local_recipient("postmaster@b.example", "b.example")
    assert refused.value.code == 550


def test_mandrill_signature_matches_the_documented_algorithm() -> None:
    # Mandrill's docs: base64(hmac_sha1(key, url + "key1value1key2value2" sorted by key)).
    params = [("mandrill_events", "[]"), ("a", "1")]
    assert mandrill.signature("k", "https://x/hook", params) == "+Eu5dc90UuRieq/HehlhW4uOJxs="
    assert mandrill.verify("k", "https://x/hook", params, "+Eu5dc90UuRieq/HehlhW4uOJxs=")
    assert not mandrill.verify("k", "https://x/hook", params, None)
    assert not mandrill.verify("k", "https://x/hook2", params, "+Eu5dc90UuRieq/HehlhW4uOJxs=")


def test_outbound_signature() -> None:
    header = webhooks.sign("whsec_x", 1700000000, b'{"a":1}')
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert webhooks.verify("whsec_x", header, b'{"a":1}', 1700000100)
    assert not webhooks.verify("whsec_x", header, b'{"a":2}', 1700000100)
    assert not webhooks.verify("whsec_x", header, b'{"a":1}', 1700009999)  # stale


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "0.0.0.0",
        "::",
        "100.64.1.1",
        "224.0.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert webhooks.forbidden(address) is not None
    assert webhooks.refusal("h.example", [address], []) is not None
    assert webhooks.refusal("h.example", [address], [address]) is None or address.startswith(
        "::ffff"
    )


def test_public_addresses_and_allowlist() -> None:
    assert webhooks.forbidden("93.184.216.34") is None
    assert webhooks.refusal("h", ["93.184.216.34", "10.0.0.1"], []) is not None  # any bad one
    assert webhooks.refusal("h", ["10.0.0.1"], ["10.0.0.0/8"]) is None
    assert webhooks.refusal("h", ["10.0.0.1"], ["h"]) is None
    assert webhooks.refusal("h", [], []) == "h does not resolve"


def test_backoff_schedule() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    delays = [30.0, 120.0]
    assert webhooks.next_attempt(1, delays, now) == datetime(2024, 1, 1, 0, 0, 30, tzinfo=UTC)
    assert webhooks.next_attempt(2, delays, now) == datetime(2024, 1, 1, 0, 2, tzinfo=UTC)
    assert webhooks.next_attempt(3, delays, now) is None
