"""A registry node's metrics: the size of its routing table and of its record store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import Gauge

from services.common.telemetry import enable_metrics

__all__ = ["watch_registry"]

REGISTRY_CONTACTS: Final = Gauge(
    "meshenc_registry_contacts",
    "Registry nodes in this node's Kademlia routing table.",
    registry=None,
)
REGISTRY_RECORDS: Final = Gauge(
    "meshenc_registry_records",
    "Encoder records this registry node holds.",
    registry=None,
)


def watch_registry(contacts: Callable[[], int], records: Callable[[], int]) -> None:
    """Report a registry node's routing-table and record counts at every scrape.

    The callables run on the scrape thread: they must only read sizes (``len`` of a dict is
    atomic in CPython), never walk structures the event loop changes.
    """
    enable_metrics("registry", REGISTRY_CONTACTS, REGISTRY_RECORDS)
    REGISTRY_CONTACTS.set_function(lambda: float(contacts()))
    REGISTRY_RECORDS.set_function(lambda: float(records()))
