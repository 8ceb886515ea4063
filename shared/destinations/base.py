"""The shape every destination shares: the item it writes, its answer, and the protocol."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.outcomes import CallResult
from shared.runstate_table import Row

__all__ = ["Destination", "Item", "Pace", "Written"]

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
