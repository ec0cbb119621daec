"""TLS for the SMTP listeners: the configured certificate, or a self-signed one made once.

A first run needs STARTTLS and SMTPS without any setup, so when ``smtp.tls_cert``
is empty we generate an ECDSA P-256 certificate into ``<data_dir>/tls/`` (key
mode 0600) and reuse it on every later start until it nears expiry.

:class:`ServerTls` lets SIGHUP replace the certificate (certbot renewing the files
in place) without a restart and without touching sessions already open.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemon.config import Config, ConfigError, relay_hostname
from daemon.private import make_private

CERT_NAME = "relay.crt"
KEY_NAME = "relay.key"
VALIDITY = timedelta(days=3650)
RENEW_BEFORE = timedelta(days=30)


def _names(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for dns in dict.fromkeys([hostname, "localhost"]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(dns)))
        except ValueError:
            names.append(x509.DNSName(dns))
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    names.append(x509.IPAddress(ipaddress.ip_address("::1")))
    return names


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a key behind."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def generate_self_signed(cert_path: Path, key_path: Path, hostname: str, now: datetime) -> None:
    """Create a self-signed certificate for ``hostname``, localhost and the loopback addresses."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "relayd self-signed"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_names(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    _write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _still_good(cert_path: Path, key_path: Path, now: datetime) -> bool:
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - RENEW_BEFORE > now


def ensure_certificate(config: Config, now: datetime | None = None) -> tuple[Path, Path]:
    """The (certificate, key) paths to serve: the configured pair, or a generated one."""
    if config.smtp.tls_cert:
        cert, key = Path(config.smtp.tls_cert), Path(config.smtp.tls_key)
        server_ssl_context(cert, key)  # fail at startup, naming the key, not at first STARTTLS
        return cert, key
    now = now or datetime.now(UTC)
    directory = config.data_path / "tls"
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if not _still_good(cert, key, now):
        hostname = relay_hostname(config)
        try:
            generate_self_signed(cert, key, hostname, now)
        except OSError as exc:
            raise ConfigError(
                "data_dir", f"cannot write the TLS certificate into {directory}: {exc}"
            ) from None
    else:
        make_private(key)
    return cert, key


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL asks for the passphrase on the terminal, and a
    # daemon would hang at start (or read a line from whatever stdin is).
    raise ConfigError(
        "smtp.tls_key",
        "the private key is encrypted with a passphrase; relayd needs an unencrypted key"
        " (e.g. openssl pkey -in KEY -out KEY.plain), readable by relayd only (mode 0600)",
    )


def certificate_warnings(cert: Path, now: datetime | None = None) -> list[str]:
    """What an operator should hear about a configured certificate that still loads."""
    try:
        parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return []
    now = now or datetime.now(UTC)
    if parsed.not_valid_after_utc <= now:
        expired = parsed.not_valid_after_utc.date().isoformat()
        return [f"smtp.tls_cert: certificate {str(cert)!r} expired on {expired}"]
    if parsed.not_valid_before_utc > now:
        start = parsed.not_valid_before_utc.date().isoformat()
        return [f"smtp.tls_cert: certificate {str(cert)!r} is not valid before {start}"]
    return []


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context (TLS 1.2+) for ``cert``/``key``; bad files raise ConfigError."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key), password=_no_passphrase)
    except FileNotFoundError as exc:
        raise ConfigError("smtp.tls_cert", f"file {exc.filename!r} does not exist") from None
    except PermissionError as exc:
        raise ConfigError(
            "smtp.tls_cert", f"cannot read {exc.filename!r}: permission denied"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            "smtp.tls_cert",
            f"cannot load certificate {str(cert)!r} with key {str(key)!r}: "
            f"not a matching PEM certificate and private key ({exc.__class__.__name__})",
        ) from None
    return context


def fingerprint(cert: Path) -> str:
    """SHA-256 of the (first) certificate in a PEM file, as hex: what a client sees."""
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    return hashlib.sha256(parsed.public_bytes(serialization.Encoding.DER)).hexdigest()


class ServerTls:
    """The listeners' TLS context, whose certificate and key can be replaced while serving.

    The listeners keep :attr:`context` for good (an SMTPS server binds its context
    when it is created). Its SNI callback, which OpenSSL runs in every handshake, with
    or without SNI from the client, moves the handshake to the context of the latest
    pair: a swap is one assignment, so no handshake ever meets a half-loaded pair, and
    sessions already open keep the certificate they started with.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = server_ssl_context(cert, key)
        self.context.sni_callback = self._select
        self._current = self.context
        self.cert, self.key = cert, key
        self.fingerprint = self._fingerprint(cert)

    @staticmethod
    def _fingerprint(cert: Path) -> str:
        try:
            return fingerprint(cert)
        except (OSError, ValueError):  # replaced again since it loaded: only log lines use it
            return ""

    def _select(
        self, sslobj: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        current = self._current
        if current is not context:
            sslobj.context = current

    def load(self, cert: Path, key: Path) -> bool:
        """Serve ``cert``/``key`` to new handshakes; True when the certificate is a new one.

        A pair that does not load raises ConfigError naming the key, and the pair in
        service stays.
        """
        context = server_ssl_context(cert, key)
        before = self.fingerprint
        self._current = context
        self.cert, self.key = cert, key
        self.fingerprint = self._fingerprint(cert)
        return self.fingerprint != before

    def describe(self) -> str:
        """``<path> (sha256 <first 16 hex digits>, valid until <date>)`` for log lines."""
        try:
            parsed = x509.load_pem_x509_certificate(self.cert.read_bytes())
            until = parsed.not_valid_after_utc.date().isoformat()
        except (OSError, ValueError):
            until = "?"
        return f"{self.cert} (sha256 {self.fingerprint[:16]}, valid until {until})"
