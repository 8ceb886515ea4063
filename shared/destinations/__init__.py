"""Where accepted reports go. Each destination is one module with the same small shape.

A destination knows how to find its target (and which ids to cache in the run-state row), how to
write a batch, and how to classify the answer. The queue, claim, write budget, retries and
poison around them are written once, in `shared.delivery`; adding a destination is a module
here plus one line in `build`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.outcomes import CallResult
from shared.store import Row

__all__ = ["Destination", "Item", "Pace", "Written", "build"]

# Asks the write budget for one more write (a token-refresh retry); False: none to be had.
Pace = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class Item:
    """One queued report for one destination: its message, its mapped state, its pair's row."""

    message: dict[str, Any]
    state: dict[str, Any]
    row: Row | None = None


@dataclass(frozen=True, slots=True)
class Written:
    """The answer to one item, and the target ids worth keeping in the run-state row."""

    result: CallResult
    cache: dict[str, Any] = field(default_factory=dict)


class Destination(Protocol):
    name: str
    # Newest state wins: claimed, coalesced and refreshed per pair (else: every report, history).
    ordered: bool
    # Takes a slot of the tenant's Graph write budget per write.
    paced: bool
    # How many queued reports one call may carry.
    batch: int

    def wants(self, script_id: str) -> bool: ...

    def write(self, items: list[Item], pace: Pace) -> list[Written]: ...


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
