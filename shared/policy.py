"""The pure decisions of delivery: accept or ignore, write or skip, change or refresh.

State in, decision out, no I/O: the store feeds these functions what a run-state row holds, and the
fleet simulation in bench/ drives the very same functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Acceptance",
    "Claim",
    "ClaimDecision",
    "PairState",
    "acceptance",
    "books_ahead",
    "decide_claim",
]


class Acceptance(StrEnum):
    NEW = "new"
    STALE = "stale"
    DUPLICATE = "duplicate"


def acceptance(accepted: str, version: str) -> Acceptance:
    """Versions are fixed-width UTC text: the newest accepted version of a pair wins."""
    if accepted > version:
        return Acceptance.STALE
    if accepted == version:
        return Acceptance.DUPLICATE
    return Acceptance.NEW


class Claim(StrEnum):
    WRITE = "write"  # take the lease and write
    SUPERSEDED = "superseded"  # a newer report was accepted: coalesce
    DELIVERED = "delivered"  # this version (or a newer one) already reached the destination
    BUSY = "busy"  # another delivery holds the pair's lease
    UNCHANGED = "unchanged"  # same state as the last write, and that write is still fresh


@dataclass(frozen=True, slots=True)
class PairState:
    """One destination's view of a (script, device) pair, as the run-state row holds it."""

    accepted: str = ""
    delivered: str = ""
    lease_until: float = 0.0
    digest: str = ""
    written_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ClaimDecision:
    claim: Claim
    wait: float = 0.0
    # A change goes before any refresh when the write budget cannot keep up.
    change: bool = True


def decide_claim(
    pair: PairState, version: str, digest: str, now: float, refresh_interval: float
) -> ClaimDecision:
    """What one queued version of a pair should do now.

    `refresh_interval` 0 writes every version; otherwise a state equal to the last one written
    is written again only once that write is older than the interval.
    """
    if pair.accepted > version:
        return ClaimDecision(Claim.SUPERSEDED)
    if pair.delivered >= version:
        return ClaimDecision(Claim.DELIVERED)
    if pair.lease_until > now:
        return ClaimDecision(Claim.BUSY, wait=pair.lease_until - now)
    change = not pair.digest or pair.digest != digest
    if not change and refresh_interval > 0 and now - pair.written_at < refresh_interval:
        return ClaimDecision(Claim.UNCHANGED, change=False)
    return ClaimDecision(Claim.WRITE, change=change)


def books_ahead(change: bool) -> bool:
    """A change reserves the next write slot even far ahead; a refresh takes only free budget.

    So when the budget cannot keep up every change is written before any refresh.
    """
    return change
