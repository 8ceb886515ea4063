"""Per-process objects, created lazily: never at import (cold start), never per request."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from shared.settings import Settings, get_settings

if TYPE_CHECKING:  # requests and azure-identity load with the first request, not at cold start
    from shared.delivery import Delivery
    from shared.destinations.base import Destination
    from shared.graph import GraphClient, TokenSource
    from shared.pacing import SharedBudget
    from shared.store import Storage

__all__ = ["Bridge", "get_bridge", "on_queue_message", "storage_credential"]


def storage_credential(settings: Settings, shared: TokenSource | None = None) -> TokenSource | None:
    """The identity storage is reached with (none with a connection string)."""
    if settings.storage_connection is not None:
        return None
    client_id = settings.storage_client_id or settings.azure_client_id
    if shared is not None and client_id == settings.azure_client_id:
        return shared
    from shared.graph import make_credential

    return make_credential(client_id, settings.credential_kind)


@dataclass
class Bridge:
    """The settings and the network clients of one worker process."""

    settings: Settings
    graph: GraphClient
    credential: TokenSource | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _deliveries: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Bridge:
        from shared.graph import GraphClient, make_credential

        credential = make_credential(settings.azure_client_id, settings.credential_kind)
        graph = GraphClient(
            settings.graph_url,
            settings.graph_scope,
            credential,
            connect_timeout=settings.graph_connect_timeout,
            read_timeout=settings.graph_read_timeout,
        )
        return cls(settings=settings, graph=graph, credential=credential)

    @cached_property
    def storage(self) -> Storage:
        """Queue, table and blob clients; with a connection string (local) missing ones are made."""
        from shared.store import Storage

        with self._lock:
            if "storage" in self.__dict__:  # another thread built it while we waited
                return self.__dict__["storage"]
            storage = Storage(self.settings, storage_credential(self.settings, self.credential))
            if self.settings.storage_connection is not None:
                storage.ensure()
            return storage

    @cached_property
    def budget(self) -> SharedBudget:
        """The tenant's Graph write budget, shared with every instance through the table."""
        from shared.pacing import SharedBudget

        return SharedBudget(
            self.storage.table,
            self.settings.graph_writes_per_second,
            refresh_interval=self.settings.refresh_interval.total_seconds(),
        )

    @cached_property
    def destinations(self) -> dict[str, Destination]:
        from shared.destinations import build

        with self._lock:
            if "destinations" in self.__dict__:
                return self.__dict__["destinations"]
            return build(self.settings, self.graph, self.credential)

    def delivery(self, name: str) -> Delivery:
        """The delivery loop of one enabled destination."""
        from shared.delivery import Delivery

        with self._lock:
            if name not in self._deliveries:
                destination = self.destinations.get(name)
                if destination is None:
                    raise DestinationDisabled(name)
                self._deliveries[name] = Delivery(
                    destination, self.storage, self.budget, self.settings
                )
            return self._deliveries[name]


class DestinationDisabled(LookupError):
    """A message for a destination this bridge no longer has enabled: the host retries it."""


_lock = threading.Lock()
_bridge: Bridge | None = None


def get_bridge() -> Bridge:
    """The process-wide bridge; raises `SettingsError` while the app settings are invalid."""
    global _bridge
    if _bridge is None:
        with _lock:
            if _bridge is None:
                _bridge = Bridge.from_settings(get_settings())
    return _bridge


def on_queue_message(destination: str, text: str, dequeue_count: int = 1) -> list[Any]:
    """A queue trigger's body: deliver with the process-wide clients and report each outcome."""
    from shared.delivery import emit_outcome

    outcomes = get_bridge().delivery(destination).process(text, dequeue_count)
    for outcome in outcomes:
        emit_outcome(destination, outcome, dequeue_count)
    return outcomes
