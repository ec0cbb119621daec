"""relayd: the Relay daemon."""

__version__ = "0.1.0"
