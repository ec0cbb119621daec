"""daemon.core.webhooks: addresses that wrap a forbidden one, and a receiver's verify that
never raises."""

from __future__ import annotations

import pytest

from daemon.core import webhooks


@pytest.mark.parametrize(
    ("address", "wrapped"),
    [
        ("2002:7f00:1::", "127.0.0.1"),
        ("2002:a9fe:a9fe::1", "169.254.169.254"),
        ("2002:c0a8:101::", "192.168.1.1"),
        ("2002:a00:1:1:1:1:1:1", "10.0.0.1"),
    ],
)
def test_6to4_addresses_are_judged_by_the_ipv4_address_they_wrap(
    address: str, wrapped: str
) -> None:
    why = webhooks.forbidden(address)
    assert why is not None and wrapped in why
    assert webhooks.endpoint_refusal(f"https://[{address}]/hook", []) is not None
    assert webhooks.refusal("hooks.example", [address], []) is not None
    assert webhooks.refusal("hooks.example", [address], [f"{address}/128"]) is None


def test_6to4_of_a_public_address_is_public() -> None:
    assert webhooks.forbidden("2002:808:808::1") is None


@pytest.mark.parametrize("v1", ["é", "\udcff", "0" * 64 + "é"])
def test_verify_refuses_non_ascii_signatures_without_raising(v1: str) -> None:
    assert webhooks.verify("whsec_x", f"t=1700000000,v1={v1}", b"{}", 1700000000) is False
