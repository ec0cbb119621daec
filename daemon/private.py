"""Files relayd generates into data_dir that hold secrets: the admin token, the tracking
secret, the self-signed TLS key. Created 0600; one found with a looser mode (written by
an older version, copied in, restored from a backup) is made private again, with a
warning, before it is used."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("relayd")


def make_private(path: Path) -> None:
    """Mode 0600 for ``path`` when relayd owns it and others could read it."""
    status = path.stat()
    if status.st_mode & 0o077 and status.st_uid == os.geteuid():
        os.chmod(path, 0o600)
        log.warning(
            "%s was readable by other users (mode %o); made it 0600",
            path,
            stat.S_IMODE(status.st_mode),
        )


def read_private(path: Path) -> str:
    """The stripped text of a generated secret, made private first (:func:`make_private`)."""
    make_private(path)
    return path.read_text().strip()
