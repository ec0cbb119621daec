"""relayctl: the operator's command line for relayd, and the Python client library."""

__version__ = "0.1.0"
