"""Imports every table module so ``metadata`` is complete (migrations, drift test)."""

from __future__ import annotations

from daemon.store import models
from daemon.store.models import metadata

TABLE_MODULES = [models]

__all__ = ["TABLE_MODULES", "metadata"]
