"""The SMTP certificate: generated once into data_dir, or the configured pair, checked at start."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from daemon.config import ConfigError
from daemon.tls import (
    ServerTls,
    certificate_warnings,
    ensure_certificate,
    fingerprint,
    generate_self_signed,
    server_ssl_context,
)

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def test_generates_a_self_signed_pair_once(make_config: Callable[..., Any]) -> None:
    config = make_config()
    cert, key = ensure_certificate(config, NOW)
    assert (cert, key) == (
        Path(config.data_dir) / "tls" / "relay.crt",
        Path(config.data_dir) / "tls" / "relay.key",
    )
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"relay.test", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert parsed.not_valid_before_utc <= NOW < parsed.not_valid_after_utc

    first = cert.read_bytes(), key.read_bytes()
    assert ensure_certificate(config, NOW + timedelta(days=30)) == (cert, key)
    assert (cert.read_bytes(), key.read_bytes()) == first

    # A generated key found readable by others (restored from a backup) is made private.
    os.chmod(key, 0o644)
    assert ensure_certificate(config, NOW + timedelta(days=31)) == (cert, key)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (cert.read_bytes(), key.read_bytes()) == first


def test_renews_a_certificate_near_expiry(make_config: Callable[..., Any]) -> None:
    config = make_config()
    cert, _ = ensure_certificate(config, NOW)
    before = cert.read_bytes()
    ensure_certificate(config, NOW + timedelta(days=3640))
    assert cert.read_bytes() != before


def test_regenerates_an_unreadable_generated_certificate(make_config: Callable[..., Any]) -> None:
    config = make_config()
    cert, key = ensure_certificate(config, NOW)
    cert.write_text("garbage")
    ensure_certificate(config, NOW)
    server_ssl_context(cert, key)  # loads again


def test_configured_pair_is_used(make_config: Callable[..., Any], tmp_path: Path) -> None:
    cert, key = tmp_path / "mine.crt", tmp_path / "mine.key"
    generate_self_signed(cert, key, "mail.example.org", NOW)
    config = make_config(smtp={"tls_cert": str(cert), "tls_key": str(key)})
    assert ensure_certificate(config) == (cert, key)
    assert not (Path(config.data_dir) / "tls").exists()
    assert isinstance(server_ssl_context(cert, key), ssl.SSLContext)


def test_invalid_configured_certificate_names_the_key(
    make_config: Callable[..., Any], tmp_path: Path
) -> None:
    cert, key = tmp_path / "bad.crt", tmp_path / "bad.key"
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    key.write_text("nope\n")
    config = make_config(smtp={"tls_cert": str(cert), "tls_key": str(key)})
    with pytest.raises(ConfigError) as info:
        ensure_certificate(config)
    assert info.value.key == "smtp.tls_cert"
    assert "cannot load certificate" in info.value.problem


def test_mismatched_key_is_refused(tmp_path: Path) -> None:
    generate_self_signed(tmp_path / "a.crt", tmp_path / "a.key", "a.example", NOW)
    generate_self_signed(tmp_path / "b.crt", tmp_path / "b.key", "b.example", NOW)
    with pytest.raises(ConfigError) as info:
        server_ssl_context(tmp_path / "a.crt", tmp_path / "b.key")
    assert info.value.key == "smtp.tls_cert"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        server_ssl_context(tmp_path / "absent.crt", tmp_path / "absent.key")
    assert "does not exist" in info.value.problem


def write_encrypted_pair(directory: Path, now: datetime) -> None:
    """``c.pem`` and ``k.pem`` in ``directory``: a certificate and its key, the key encrypted
    with a passphrase."""
    from cryptography.hazmat.primitives import serialization

    generate_self_signed(directory / "c.pem", directory / "plain.pem", "relay.test", now)
    key = serialization.load_pem_private_key((directory / "plain.pem").read_bytes(), None)
    (directory / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )


def test_encrypted_key_is_refused_without_asking_for_a_passphrase(tmp_path: Path) -> None:
    write_encrypted_pair(tmp_path, NOW)
    # Without a passphrase callback OpenSSL prompts on the terminal (a daemon hangs).
    with pytest.raises(ConfigError) as info:
        server_ssl_context(tmp_path / "c.pem", tmp_path / "k.pem")
    assert info.value.key == "smtp.tls_key"
    assert "encrypted" in str(info.value)


def test_expired_certificate_is_a_warning(tmp_path: Path) -> None:
    generate_self_signed(tmp_path / "c.pem", tmp_path / "k.pem", "relay.test", NOW)
    assert certificate_warnings(tmp_path / "c.pem", NOW) == []
    later = NOW + timedelta(days=3651)
    (warning,) = certificate_warnings(tmp_path / "c.pem", later)
    assert warning.startswith("smtp.tls_cert:") and "expired on" in warning


def _served(port: int, server_name: str | None) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with context.wrap_socket(sock, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None and tls.recv(2) == b"ok"
    return hashlib.sha256(der).hexdigest()


async def test_server_tls_swaps_the_pair_for_new_handshakes_only(tmp_path: Path) -> None:
    """An SMTPS-style server keeps the context it was created with; ServerTls.load still
    changes what new handshakes (with or without SNI) get, and a bad pair changes nothing."""
    for name in ("a", "b"):
        generate_self_signed(tmp_path / f"{name}.crt", tmp_path / f"{name}.key", "relay.test", NOW)
    tls = ServerTls(tmp_path / "a.crt", tmp_path / "a.key")
    a, b = fingerprint(tmp_path / "a.crt"), fingerprint(tmp_path / "b.crt")
    assert tls.fingerprint == a

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=tls.context)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await asyncio.to_thread(_served, port, None) == a
        assert tls.load(tmp_path / "b.crt", tmp_path / "b.key") is True
        assert tls.load(tmp_path / "b.crt", tmp_path / "b.key") is False  # the same one again
        for server_name in (None, "relay.test"):
            assert await asyncio.to_thread(_served, port, server_name) == b
        with pytest.raises(ConfigError) as info:
            tls.load(tmp_path / "a.crt", tmp_path / "b.key")
        assert info.value.key == "smtp.tls_cert"
        assert (tls.cert, tls.fingerprint) == (tmp_path / "b.crt", b)
        assert await asyncio.to_thread(_served, port, None) == b
        assert f"b.crt (sha256 {b[:16]}, valid until 2035-" in tls.describe()
    finally:
        server.close()
        await server.wait_closed()
