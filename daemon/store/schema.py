"""Imports every table module so ``metadata`` is complete (migrations, drift test)."""

from __future__ import annotations

from daemon.store import audience, models
from daemon.store import tenancy as tenancy_tables
from daemon.store.models import metadata

TABLE_MODULES = [models, tenancy_tables, audience]

__all__ = ["TABLE_MODULES", "metadata"]
