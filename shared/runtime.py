"""Per-process objects, created lazily: never at import (cold start), never per request."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

from shared.graph import GraphClient, TokenSource, make_credential
from shared.pacing import Pacer, SharedBudget, TokenBucket
from shared.settings import Settings, get_settings
from shared.store import Storage

__all__ = ["Bridge", "get_bridge"]


@dataclass
class Bridge:
    """The settings and the network clients of one worker process."""

    settings: Settings
    graph: GraphClient
    credential: TokenSource | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Bridge:
        credential = make_credential(settings.azure_client_id, settings.credential)
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
        """Queue, table and blob clients; the queues and table are created if missing."""
        with self._lock:
            if "storage" in self.__dict__:  # another thread built it while we waited
                return self.__dict__["storage"]
            credential = None
            if self.settings.storage_connection is None:
                client_id = self.settings.storage_client_id or self.settings.azure_client_id
                credential = (
                    self.credential
                    if client_id == self.settings.azure_client_id and self.credential
                    else make_credential(client_id, self.settings.credential)
                )
            storage = Storage(self.settings, credential)
            storage.ensure()
            return storage

    @cached_property
    def pacer(self) -> Pacer:
        """Queue mode shares the write budget across instances; sync mode paces this process."""
        rate = self.settings.graph_writes_per_second
        if self.settings.delivery_mode == "queue":
            return SharedBudget(self.storage.table, rate)
        return TokenBucket(rate)


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
