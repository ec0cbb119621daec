"""Delivery workers: claim due messages under a lease and hand them to providers."""

from daemon.delivery.dispatcher import Dispatcher, worker_id

__all__ = ["Dispatcher", "worker_id"]
