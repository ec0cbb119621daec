"""daemon.core.lockout: failed AUTH attempts per client address in a sliding window."""

from __future__ import annotations

from daemon.core.lockout import AuthLockout, client_key


def test_locked_after_limit_failures_until_the_oldest_ages_out() -> None:
    lockout = AuthLockout()
    assert lockout.failed("192.0.2.1", 0.0, 3, 10.0) == 0.0
    assert lockout.failed("192.0.2.1", 4.0, 3, 10.0) == 0.0
    assert lockout.failed("192.0.2.1", 6.0, 3, 10.0) == 4.0  # until the first is 10s old
    assert lockout.locked_for("192.0.2.1", 9.0, 3, 10.0) == 1.0
    assert lockout.locked_for("192.0.2.2", 9.0, 3, 10.0) == 0.0  # per address
    assert lockout.locked_for("192.0.2.1", 10.0, 3, 10.0) == 0.0
    # A sliding window: one more failure now locks again (two are still recent).
    assert lockout.failed("192.0.2.1", 10.5, 3, 10.0) == 3.5


def test_zero_limit_or_window_never_locks() -> None:
    lockout = AuthLockout()
    for second in range(100):
        assert lockout.failed("192.0.2.1", float(second), 0, 10.0) == 0.0
        assert lockout.failed("192.0.2.1", float(second), 5, 0.0) == 0.0
    assert len(lockout) == 0


def test_memory_is_bounded() -> None:
    lockout = AuthLockout(max_clients=3)
    for index in range(10):
        lockout.failed(f"192.0.2.{index}", 0.0, 1000, 60.0)
    assert len(lockout) == 3
    for _ in range(5000):
        lockout.failed("192.0.2.9", 1.0, 2, 60.0)
    assert lockout.locked_for("192.0.2.9", 2.0, 2, 60.0) == 59.0


def test_a_lower_limit_applies_to_the_failures_already_counted() -> None:
    lockout = AuthLockout()
    lockout.failed("192.0.2.1", 0.0, 10, 60.0)
    lockout.failed("192.0.2.1", 1.0, 10, 60.0)
    assert lockout.failed("192.0.2.1", 2.0, 2, 60.0) == 59.0


def test_client_key_groups_an_ipv6_host_by_its_64() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert (
        client_key("2001:db8:1:2::5") == client_key("2001:db8:1:2:ffff::9") == ("2001:db8:1:2::/64")
    )
    assert client_key("2001:db8:1:3::5") != client_key("2001:db8:1:2::5")
    assert client_key("fe80::1%eth0") == "fe80::/64"
    assert client_key("") == ""
