"""The reference's Python client module: ``from smtp_relay import Client``.

A thin alias of :mod:`relayctl.client`, so the API reference's example runs unchanged.
"""

from relayctl.client import *  # noqa: F403 - re-export exactly the client's public names
from relayctl.client import __all__ as __all__
