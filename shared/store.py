"""Azure Storage: the destination queues, the claim-check blobs and the run-state table.

The table keeps one row per (script, device): the newest accepted version, and per destination the
newest delivered version, a short write lease, the digest and time of the last write and the
destination's cached target id. Every change is a write guarded by the entity's ETag, so
concurrent instances never lose each other's updates.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)

from shared.policy import Acceptance, Claim, PairState, acceptance, decide_claim
from shared.settings import QUEUES, Settings

__all__ = [
    "PAYLOAD_CONTAINER",
    "QUEUES",
    "TABLE",
    "AcceptResult",
    "ClaimResult",
    "Row",
    "RunStateStore",
    "Storage",
    "poison_queue",
    "write_if_unchanged",
]

TABLE = "runstates"
PAYLOAD_CONTAINER = "compliance-payloads"
# A queue message holds 64 KiB after base64; larger reports travel as a blob (claim check).
MAX_INLINE_MESSAGE = 45_000
# How often a read-modify-write is retried when another writer keeps changing the row; past
# that the pair is treated as busy, never as an error.
ETAG_RETRIES = 8
# Run-state column prefix per destination: the graph columns keep their first names.
PREFIX = {"graph": "", "logs": "Logs", "entra": "Entra"}


def poison_queue(destination: str) -> str:
    return f"{QUEUES[destination]}-poison"


# Short timeouts and few retries: an agent is waiting, and its own retry is cheaper than a long
# stall; the queue trigger retries failed deliveries anyway.
_CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 2, "connection_timeout": 3, "read_timeout": 10}
# Queue and blob clients use the storage retry policy (15 s first back-off by default).
_STORAGE_RETRY: dict[str, Any] = {
    "initial_backoff": 0.2,
    "increment_base": 1.1,
    "random_jitter_range": 0.2,
}
_TABLE_RETRY: dict[str, Any] = {"retry_backoff_factor": 0.5}


class Storage:
    """The queues, poison queues, claim-check container and run-state table of one process.

    Creating the clients does no I/O; `ensure` creates what is missing and only the local stack
    calls it (in Azure the Bicep declares everything, and operators may not create anything).
    """

    def __init__(self, settings: Settings, credential: Any = None) -> None:
        from azure.data.tables import TableClient
        from azure.storage.blob import ContainerClient
        from azure.storage.queue import (
            QueueClient,
            TextBase64DecodePolicy,
            TextBase64EncodePolicy,
        )

        # host.json uses messageEncoding base64, as the Functions queue trigger expects.
        policies = {
            "message_encode_policy": TextBase64EncodePolicy(),
            "message_decode_policy": TextBase64DecodePolicy(),
        }
        options = dict(_CLIENT_OPTIONS)
        if settings.storage_connection is None:
            options["credential"] = credential
        blob_args = {**options, **_STORAGE_RETRY}
        queue_args = {**blob_args, **policies}
        table_args = {**options, **_TABLE_RETRY}
        names = [*QUEUES.values(), *(poison_queue(d) for d in QUEUES)]
        if settings.storage_connection is not None:
            conn = settings.storage_connection.get_secret_value()
            self.queues = {
                n: QueueClient.from_connection_string(conn, n, **queue_args) for n in names
            }
            self.table = TableClient.from_connection_string(conn, TABLE, **table_args)
            self.payloads = ContainerClient.from_connection_string(
                conn, PAYLOAD_CONTAINER, **blob_args
            )
        else:
            account = settings.storage_account
            queue_uri = settings.storage_queue_uri or f"https://{account}.queue.core.windows.net"
            table_uri = settings.storage_table_uri or f"https://{account}.table.core.windows.net"
            blob_uri = settings.storage_blob_uri or f"https://{account}.blob.core.windows.net"
            self.queues = {n: QueueClient(queue_uri, n, **queue_args) for n in names}
            self.table = TableClient(table_uri, TABLE, **table_args)
            self.payloads = ContainerClient(blob_uri, PAYLOAD_CONTAINER, **blob_args)
        self.runstates = RunStateStore(self.table)

    def queue(self, destination: str, *, poison: bool = False) -> Any:
        return self.queues[poison_queue(destination) if poison else QUEUES[destination]]

    def ensure(self) -> None:
        """Create what is missing (Azurite starts empty; in Azure the Bicep creates them)."""
        creates = [q.create_queue for q in self.queues.values()]
        for create in (*creates, self.table.create_table, self.payloads.create_container):
            with contextlib.suppress(ResourceExistsError):
                create()

    def enqueue(self, message: dict[str, Any], delay: float = 0, *, poison: bool = False) -> None:
        """Send a message to its destination's queue; a large report travels as a blob.

        A poison envelope goes to the poison queue of the destination its report was for.
        """
        destination = message.get("destination") or "graph"
        text = json.dumps(message, separators=(",", ":"))
        if len(text) > MAX_INLINE_MESSAGE and "state" in message:
            text = json.dumps(self._claim_check(message), separators=(",", ":"))
        elif len(text) > MAX_INLINE_MESSAGE and isinstance(message.get("report"), dict):
            report = message["report"]
            if "state" in report:
                report = self._claim_check(report)
            text = json.dumps({**message, "report": report}, separators=(",", ":"))
        # time_to_live=-1: an accepted report never expires out of the queue unseen.
        self.queue(destination, poison=poison).send_message(
            text, visibility_timeout=math.ceil(delay) or None, time_to_live=-1
        )

    def _claim_check(self, message: dict[str, Any]) -> dict[str, Any]:
        name = f"{message.get('destination', 'graph')}/{message['reportId']}-{uuid.uuid4().hex}"
        self.payloads.upload_blob(f"{name}.json", json.dumps(message["state"]), overwrite=True)
        rest = {k: v for k, v in message.items() if k != "state"}
        return {**rest, "statePayload": f"{name}.json"}

    def load_state(self, message: dict[str, Any]) -> dict[str, Any]:
        if "state" in message:
            return message["state"]
        blob = self.payloads.download_blob(message["statePayload"]).readall()
        return json.loads(blob)

    def forget_payload(self, message: dict[str, Any]) -> None:
        if "statePayload" in message:
            with contextlib.suppress(ResourceNotFoundError):
                self.payloads.delete_blob(message["statePayload"])


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
        )


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
    ) -> ClaimResult:
        """Take the pair's write lease for this version, so no older write can land after it."""
        for _ in range(ETAG_RETRIES):
            now = self._clock()
            row = self.read(script_id, device_id)
            decision = decide_claim(row.pair(destination), version, digest, now, refresh_interval)
            if decision.claim is not Claim.WRITE:
                return ClaimResult(decision.claim, row, wait=decision.wait, change=decision.change)
            owner = uuid.uuid4().hex
            prefix = PREFIX[destination]
            # AcceptedAt also heals here: ingest may have queued the report and then failed to
            # record it.
            fields = {
                "AcceptedAt": max(version, row.get("AcceptedAt") or ""),
                f"{prefix}LeaseOwner": owner,
                f"{prefix}LeaseUntil": now + lease_seconds,
            }
            written = self._write(row, fields)
            if written is not None:
                return ClaimResult(Claim.WRITE, written, owner, change=decision.change)
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
    ) -> None:
        """Record the outcome and end the lease (or let it run out when a write may still land).

        The first try reuses the claim's ETag, so a delivery costs no second read.
        """
        prefix = PREFIX[destination]
        row = claim.row
        for _ in range(ETAG_RETRIES):
            if row is None or not row.exists or row.col(destination, "LeaseOwner") != claim.owner:
                return  # the lease expired and another delivery took over
            fields: dict[str, Any] = {
                f"{prefix}LastOutcome": outcome,
                f"{prefix}LastReason": reason,
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

    def skip_unchanged(self, destination: str, row: Row, version: str) -> None:
        """An unchanged state within the refresh interval counts as delivered, without a write."""
        prefix = PREFIX[destination]
        for _ in range(ETAG_RETRIES):
            if (row.col(destination, "DeliveredAt") or "") >= version:
                return
            fields = {
                f"{prefix}DeliveredAt": version,
                f"{prefix}LastOutcome": "ignored",
                f"{prefix}LastReason": "unchanged",
            }
            if row.exists and self._write(row, fields) is not None:
                return
            row = self.read(row.script_id, row.device_id)
