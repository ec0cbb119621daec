"""SMTP ingest: the aiosmtpd protocol subclass, the relay handler and the listeners."""

from daemon.smtp.handler import RelayHandler
from daemon.smtp.listener import SmtpListeners
from daemon.smtp.protocol import RelaySMTP

__all__ = ["RelayHandler", "RelaySMTP", "SmtpListeners"]
