"""The run-state table: one row per (script, device), and the rules every write to it follows.

A row holds the newest accepted version, and per destination the newest delivered version, a
short write lease, the digest and time of the last write, a booked budget slot and the
destination's cached target id. Every change is a write guarded by the entity's ETag, so
concurrent instances never lose each other's updates.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from shared.policy import Acceptance, Claim, PairState, acceptance, decide_claim

__all__ = [
    "ETAG_RETRIES",
    "PREFIX",
    "TABLE",
    "AcceptResult",
    "ClaimResult",
    "Row",
    "RunStateStore",
    "write_if_unchanged",
]

TABLE = "runstates"
# How often a read-modify-write is retried when another writer keeps changing the row; past
# that the pair is treated as busy, never as an error.
ETAG_RETRIES = 8
# Run-state column prefix per destination: the graph columns keep their first names.
PREFIX = {"graph": "", "logs": "Logs", "entra": "Entra"}


def write_if_unchanged(table: Any, row: Any | None, entity: dict[str, Any]) -> str | None:
    """Create `entity`, or merge it into `row` if nobody changed `row` since it was read.

    Returns the new ETag; None means another writer got there first: read again, decide again.
    `row` may be anything with `metadata["etag"]` (a read entity, or a `Row`).
    """
    try:
        if row is None:
            meta = table.create_entity(entity)
        else:
            meta = table.update_entity(
                entity,
                mode="merge",
                etag=row.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
    except (ResourceExistsError, ResourceModifiedError):
        return None
    return (meta or {}).get("etag") or "*"


@dataclass
class Row:
    """One pair's run-state row as last read or written: its fields and ETag (None: absent)."""

    script_id: str
    device_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    etag: str | None = None
    # Carried in a queue message rather than read: trusted only through an ETag-guarded write.
    carried: bool = False

    @property
    def metadata(self) -> dict[str, Any]:
        return {"etag": self.etag}

    @property
    def exists(self) -> bool:
        return self.etag is not None

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def col(self, destination: str, name: str) -> Any:
        return self.fields.get(PREFIX[destination] + name)

    def pair(self, destination: str) -> PairState:
        return PairState(
            accepted=self.fields.get("AcceptedAt") or "",
            delivered=self.col(destination, "DeliveredAt") or "",
            lease_until=float(self.col(destination, "LeaseUntil") or 0),
            digest=self.col(destination, "Digest") or "",
            written_at=float(self.col(destination, "WrittenAt") or 0),
            slot_at=float(self.col(destination, "SlotAt") or 0),
        )

    def snapshot(self) -> dict[str, Any]:
        """The row as a queue message carries it, so a claim can skip its read (ETag-checked)."""
        plain = (str, int, float, bool)
        return {
            "etag": self.etag,
            "fields": {k: v for k, v in self.fields.items() if isinstance(v, plain)},
        }

    @classmethod
    def from_snapshot(cls, script_id: str, device_id: str, snapshot: Any) -> Row | None:
        """A carried row, or None when there is none worth trusting (then the claim reads)."""
        if not isinstance(snapshot, dict):
            return None
        etag, fields = snapshot.get("etag"), snapshot.get("fields")
        if not isinstance(etag, str) or etag == "*" or not isinstance(fields, dict):
            return None
        return cls(script_id, device_id, dict(fields), etag, carried=True)


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """Ingest's stale check and record in one: the decision, the row, and (sync) the lease."""

    acceptance: Acceptance
    row: Row
    owner: str = ""
    busy: float = 0.0
    # What the row said before, so an acceptance that could not be kept can be given back.
    previous: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    decision: Claim
    row: Row | None = None
    owner: str = ""
    wait: float = 0.0
    change: bool = True
    slot_at: float | None = None
    rank: float = 0.0


class RunStateStore:
    """Newest accepted and delivered versions per (script, device), and per-destination leases."""

    def __init__(self, table: Any, clock: Any = time.time) -> None:
        self.table = table
        self._clock = clock

    def read(self, script_id: str, device_id: str) -> Row:
        try:
            entity = self.table.get_entity(partition_key=script_id, row_key=device_id)
        except ResourceNotFoundError:
            return Row(script_id, device_id)
        return Row(script_id, device_id, dict(entity), entity.metadata["etag"])

    def _write(self, row: Row, fields: dict[str, Any]) -> Row | None:
        keys = {"PartitionKey": row.script_id, "RowKey": row.device_id}
        etag = write_if_unchanged(self.table, row if row.exists else None, {**keys, **fields})
        if etag is None:
            return None
        return Row(row.script_id, row.device_id, {**row.fields, **fields}, etag)

    def accept(
        self,
        script_id: str,
        device_id: str,
        version: str,
        report_id: str,
        detection_state: str,
        *,
        claim: tuple[str, float] | None = None,
    ) -> AcceptResult:
        """Record a report as the pair's newest accepted one, unless an equal or newer one is.

        One read and one conditional write in the common case. With `claim` (destination,
        lease seconds), the same write also takes that destination's lease (sync mode); while
        another delivery of the pair holds it, nothing is written and `busy` says how long.
        """
        for _ in range(ETAG_RETRIES):
            row = self.read(script_id, device_id)
            decision = acceptance(row.get("AcceptedAt") or "", version)
            if decision is not Acceptance.NEW:
                return AcceptResult(decision, row)
            fields: dict[str, Any] = {
                "AcceptedAt": version,
                "AcceptedReportId": report_id,
                "AcceptedDetectionState": detection_state,
            }
            previous = {name: row.get(name) or "" for name in fields}
            owner = ""
            if claim is not None:
                destination, lease = claim
                now = self._clock()
                held = float(row.col(destination, "LeaseUntil") or 0) - now
                if held > 0:
                    return AcceptResult(Acceptance.NEW, row, busy=held)
                owner = uuid.uuid4().hex
                prefix = PREFIX[destination]
                fields |= {f"{prefix}LeaseOwner": owner, f"{prefix}LeaseUntil": now + lease}
            written = self._write(row, fields)
            if written is not None:
                return AcceptResult(Acceptance.NEW, written, owner, previous=previous)
        raise ResourceModifiedError("run-state row kept changing; try again")

    def unaccept(self, row: Row, version: str, previous: dict[str, Any]) -> None:
        """Give an acceptance back (the report was not stored after all), if it is still ours."""
        for _ in range(ETAG_RETRIES):
            if row.get("AcceptedAt") != version:
                return
            if self._write(row, previous) is not None:
                return
            row = self.read(row.script_id, row.device_id)

    def claim(
        self,
        destination: str,
        script_id: str,
        device_id: str,
        version: str,
        digest: str,
        *,
        lease_seconds: float,
        refresh_interval: float,
        refresh_bar: float = 0.0,
        known: Row | None = None,
    ) -> ClaimResult:
        """Take the pair's write lease for this version, so no older write can land after it.

        An unchanged state within the refresh interval, or below the fleet's refresh age bar, is
        recorded as delivered instead, in the same conditional write. `known` (the row as
        ingest left it) stands in for the first read: a decision taken on it is acted on only
        through a write its ETag guards, anything else is decided again on a fresh read.
        """
        prefix = PREFIX[destination]
        for _ in range(ETAG_RETRIES):
            now = self._clock()
            row, known = known or self.read(script_id, device_id), None
            decision = decide_claim(
                row.pair(destination),
                version,
                digest,
                now,
                refresh_interval,
                refresh_bar=refresh_bar,
                key=f"{script_id}/{device_id}",
            )
            if decision.claim is Claim.UNCHANGED:
                # It counts as delivered: an older report arriving later is a duplicate.
                fields: dict[str, Any] = {
                    f"{prefix}DeliveredAt": version,
                    f"{prefix}LastOutcome": "ignored",
                    f"{prefix}LastReason": "unchanged",
                }
                if row.exists and self._write(row, fields) is not None:
                    return ClaimResult(Claim.UNCHANGED, row, change=False, rank=decision.rank)
                continue
            if decision.claim is not Claim.WRITE:
                if not row.carried:
                    return ClaimResult(
                        decision.claim, row, wait=decision.wait, change=decision.change
                    )
                continue
            owner = uuid.uuid4().hex
            # AcceptedAt also heals here: ingest may have queued the report and then failed to
            # record it.
            fields = {
                "AcceptedAt": max(version, row.get("AcceptedAt") or ""),
                f"{prefix}LeaseOwner": owner,
                f"{prefix}LeaseUntil": now + lease_seconds,
            }
            written = self._write(row, fields)
            if written is not None:
                return ClaimResult(
                    Claim.WRITE,
                    written,
                    owner,
                    change=decision.change,
                    slot_at=decision.slot_at,
                    rank=decision.rank,
                )
        return ClaimResult(Claim.BUSY, wait=1.0)

    def finish(
        self,
        destination: str,
        claim: ClaimResult,
        version: str,
        *,
        outcome: str,
        reason: str,
        delivered: bool = False,
        digest: str | None = None,
        detection_state: str | None = None,
        keep_lease: bool = False,
        cache: dict[str, Any] | None = None,
        slot_at: float = 0.0,
    ) -> None:
        """Record the outcome and end the lease (or let it run out when a write may still land).

        `slot_at` is the budget slot the pair's message comes back for (0: none): the pair's
        next version takes it over instead of booking another. The first try reuses the
        claim's ETag, so a delivery costs no second read.
        """
        prefix = PREFIX[destination]
        row = claim.row
        for _ in range(ETAG_RETRIES):
            if row is None or not row.exists or row.col(destination, "LeaseOwner") != claim.owner:
                return  # the lease expired and another delivery took over
            fields: dict[str, Any] = {
                f"{prefix}LastOutcome": outcome,
                f"{prefix}LastReason": reason,
                f"{prefix}SlotAt": slot_at,
                **{f"{prefix}{k}": v for k, v in (cache or {}).items()},
            }
            if delivered and version > (row.col(destination, "DeliveredAt") or ""):
                fields[f"{prefix}DeliveredAt"] = version
                fields[f"{prefix}DeliveredState"] = detection_state
                fields[f"{prefix}Digest"] = digest
                fields[f"{prefix}WrittenAt"] = self._clock()
            if not keep_lease:
                fields |= {f"{prefix}LeaseOwner": "", f"{prefix}LeaseUntil": 0.0}
            if self._write(row, fields) is not None:
                return
            row = self.read(row.script_id, row.device_id)
