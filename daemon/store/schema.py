"""Imports every table module so ``metadata`` is complete (migrations, drift test)."""

from __future__ import annotations

from daemon.store import accounts, audience, models
from daemon.store import engagement as engagement_tables
from daemon.store import providers as provider_tables
from daemon.store import tenancy as tenancy_tables
from daemon.store.models import metadata

TABLE_MODULES = [
    models,
    tenancy_tables,
    audience,
    provider_tables,
    accounts,
    engagement_tables,
]

__all__ = ["TABLE_MODULES", "metadata"]
