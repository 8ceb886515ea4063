"""Per-process objects, created lazily: never at import (cold start), never per request."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from shared.graph import GraphClient, make_credential
from shared.settings import Settings, get_settings

__all__ = ["Bridge", "get_bridge"]


@dataclass(frozen=True)
class Bridge:
    settings: Settings
    graph: GraphClient

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
        return cls(settings=settings, graph=graph)


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
