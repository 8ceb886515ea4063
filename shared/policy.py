"""The pure decisions of delivery: accept or ignore, write or skip, change or refresh, and how
often a fleet's unchanged states can be refreshed on the budget it has.

State in, decision out, no I/O: the store feeds these functions what a run-state row holds, and the
fleet simulation in bench/ drives the very same functions.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "MAX_REFRESH_AFTER",
    "REFRESH_RETRY_MIN",
    "REFRESH_RETRY_WINDOW",
    "REFRESH_SPREAD",
    "REFRESH_STEP",
    "REFRESH_TRIES",
    "SLOT_LATENESS",
    "Acceptance",
    "Claim",
    "ClaimDecision",
    "PairState",
    "acceptance",
    "books_ahead",
    "decide_claim",
    "refresh_after",
    "refresh_rank",
    "refresh_retry",
]

# A booked slot is used only this close to its time: writes shifted by at most this much keep
# every 20 s window within the budget's 5% headroom (20 s / 0.95 - 20 s = 1.05 s).
SLOT_LATENESS = 0.5
# How far one refresh whose last try found no free budget raises the fleet's refresh age bar, and
# one unused budget slot lowers it: small steps, so the bar settles where the refreshes due match
# the spare budget instead of swinging with each burst.
REFRESH_STEP = 0.01
# The bar never rises past this (a year): a budget held by changes for days must not park it.
MAX_REFRESH_AFTER = 366 * 86400.0
# A refresh that finds no free budget tries again this many times, at random within the window
# (REFRESH_RETRY_MIN to REFRESH_RETRY_WINDOW seconds later).
REFRESH_TRIES = 2
# One more try per this share of the bar a pair's rank lies past it, up to REFRESH_TRIES_MORE.
REFRESH_PRIORITY = 10.0
REFRESH_TRIES_MORE = 8
REFRESH_RETRY_MIN = 5.0
REFRESH_RETRY_WINDOW = 600.0
# A pair's place against the bar is its age stretched by up to this share, by a hash of the
# report: pairs that report on a fixed schedule have ages in whole report intervals, and without
# it a bar between two of them would let all of one interval through at once, or none.
REFRESH_SPREAD = 0.15


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
    # A budget slot an earlier version of the pair booked and has not used yet (0: none).
    slot_at: float = 0.0


@dataclass(frozen=True, slots=True)
class ClaimDecision:
    claim: Claim
    wait: float = 0.0
    # A change goes before any refresh when the write budget cannot keep up.
    change: bool = True
    # The slot this version takes over from an earlier one the pair booked (None: book its own).
    slot_at: float | None = None
    # A refresh's place in the age order: seconds since the pair's last write, spread a little.
    rank: float = 0.0


def decide_claim(
    pair: PairState,
    version: str,
    digest: str,
    now: float,
    refresh_interval: float,
    *,
    refresh_bar: float = 0.0,
    key: str = "",
) -> ClaimDecision:
    """What one queued version of a pair should do now.

    `refresh_interval` 0 writes every version; otherwise a state equal to the last one written
    is written again only once that write is older than the interval, and its rank (`key`: the
    pair's name) reaches the fleet's `refresh_bar`. A version that writes inherits the slot an
    earlier version of its pair booked (and a booked slot is always written, never left
    unused): a pair holds at most one place in the budget's queue, however often it reports.
    """
    if pair.accepted > version:
        return ClaimDecision(Claim.SUPERSEDED)
    if pair.delivered >= version:
        return ClaimDecision(Claim.DELIVERED)
    if pair.lease_until > now:
        return ClaimDecision(Claim.BUSY, wait=pair.lease_until - now)
    change = not pair.digest or pair.digest != digest
    age = now - pair.written_at
    rank = age if change else refresh_rank(age, f"{key}/{version}")
    slot = pair.slot_at if pair.slot_at > 0 and pair.slot_at >= now - SLOT_LATENESS else None
    fresh = age < refresh_interval or rank < refresh_bar
    if slot is None and not change and refresh_interval > 0 and fresh:
        return ClaimDecision(Claim.UNCHANGED, change=False, rank=rank)
    return ClaimDecision(Claim.WRITE, change=change, slot_at=slot, rank=rank)


def refresh_rank(age: float, key: str) -> float:
    """A refresh's place in the age order: its age, stretched by a share fixed by `key`."""
    share = zlib.crc32(key.encode()) / 2**32  # a spread, not a secret: zlib is loaded anyway
    return age * (1 + REFRESH_SPREAD * share)


def books_ahead(change: bool) -> bool:
    """A change reserves the next write slot even far ahead; a refresh takes only free budget.

    So when the budget cannot keep up every change is written before any refresh.
    """
    return change


def refresh_retry(tries: int, draw: float, rank: float = 0.0, bar: float = 0.0) -> float | None:
    """When a refresh that found no free budget tries again (seconds), or None to end it.

    A pair reports at a fixed moment of its interval, and the budget may be short at that
    moment and idle a minute later: a few tries spread at random over the next minutes pool the
    budget across moments, instead of leaving the pair for a whole interval. The further a
    pair's rank lies past the bar, the more tries it gets, so the oldest are not left behind by
    bad luck twice. `draw` in [0, 1).
    """
    over = rank / bar - 1 if bar > 0 and rank > bar else 0.0
    if tries >= REFRESH_TRIES + int(min(REFRESH_PRIORITY * over, REFRESH_TRIES_MORE)):
        return None
    return REFRESH_RETRY_MIN + draw * (REFRESH_RETRY_WINDOW - REFRESH_RETRY_MIN)


def refresh_after(bar: float, floor: float, *, missed: int = 0, idle_slots: float = 0.0) -> float:
    """The fleet's refresh age bar: how old a pair's last write must be before it is refreshed.

    It starts at `floor` (`BRIDGE_REFRESH_INTERVAL`); each refresh whose last try found the
    budget taken raises it a step and each budget slot that went unused lowers it a step, so it
    settles where the refreshes due fit the budget the changes leave: the pairs written longest
    ago are refreshed first. `floor` 0 (every report written) keeps no bar.
    """
    if floor <= 0:
        return 0.0
    value = max(bar, floor) * (1 + REFRESH_STEP) ** (missed - idle_slots)
    return min(max(value, floor), MAX_REFRESH_AFTER)
