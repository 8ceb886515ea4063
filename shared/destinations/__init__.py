"""Where accepted reports go. Each destination is one module with the same small shape.

A destination knows how to find its target (and which ids to cache in the run-state row), how to
write a batch, and how to classify the answer. The queue, claim, write budget, retries and
poison around them are written once, in `shared.delivery`; adding a destination is a module
here plus one line in `build`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.destinations.base import Destination

__all__ = ["build"]


def build(settings: Any, graph: Any, credential: Any) -> dict[str, Destination]:
    """The enabled destinations, by name, in the order the setting lists them.

    Each module is imported only when enabled: a cold start pays for what it uses.
    """

    def graph_runstates() -> Destination:
        from shared.destinations.runstates import RunStates

        return RunStates(graph, settings)

    def logs_table() -> Destination:
        from shared.destinations.logs import LogsTable

        return LogsTable(settings, credential)

    def entra_attributes() -> Destination:
        from shared.destinations.entra import EntraAttributes

        return EntraAttributes(graph, settings)

    makers: dict[str, Callable[[], Destination]] = {
        "graph": graph_runstates,
        "logs": logs_table,
        "entra": entra_attributes,
    }
    return {name: makers[name]() for name in settings.destinations}
