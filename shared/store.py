"""Azure Storage: the delivery queues, the claim-check blobs and the run-state table.

The table keeps, per (script, device), the newest accepted and the newest delivered
`lastStateUpdateDateTime` and a short write lease. Every change is a read-modify-write guarded by
the entity's ETag, so concurrent instances never lose each other's updates.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)

from shared.settings import Settings

__all__ = [
    "PAYLOAD_CONTAINER",
    "POISON_QUEUE",
    "QUEUE",
    "TABLE",
    "Acceptance",
    "Claim",
    "ClaimResult",
    "RunStateStore",
    "Storage",
    "StorageError",
    "write_if_unchanged",
]

QUEUE = "compliance-results"
POISON_QUEUE = "compliance-results-poison"
TABLE = "runstates"
PAYLOAD_CONTAINER = "compliance-payloads"
# A queue message holds 64 KiB after base64; larger reports travel as a blob (claim check).
MAX_INLINE_MESSAGE = 45_000
_ETAG_RETRIES = 8
StorageError = AzureError


class Acceptance(StrEnum):
    NEW = "new"
    STALE = "stale"
    DUPLICATE = "duplicate"


class Claim(StrEnum):
    GRANTED = "granted"
    SUPERSEDED = "superseded"  # a newer report was accepted: coalesce
    DELIVERED = "delivered"  # this version (or a newer one) is already in Graph
    BUSY = "busy"  # another instance is writing this pair right now


@dataclass(frozen=True, slots=True)
class ClaimResult:
    claim: Claim
    owner: str = ""
    wait: float = 0.0


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
    """The queue, poison queue, claim-check container and run-state table clients of one process."""

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
        storage = {**options, **_STORAGE_RETRY}
        queue_args = {**storage, **policies}
        table = {**options, **_TABLE_RETRY}
        if settings.storage_connection is not None:
            conn = settings.storage_connection.get_secret_value()
            self.queue = QueueClient.from_connection_string(conn, QUEUE, **queue_args)
            self.poison = QueueClient.from_connection_string(conn, POISON_QUEUE, **queue_args)
            self.table = TableClient.from_connection_string(conn, TABLE, **table)
            self.payloads = ContainerClient.from_connection_string(
                conn, PAYLOAD_CONTAINER, **storage
            )
        else:
            account = settings.storage_account
            queue_uri = settings.storage_queue_uri or f"https://{account}.queue.core.windows.net"
            table_uri = settings.storage_table_uri or f"https://{account}.table.core.windows.net"
            blob_uri = settings.storage_blob_uri or f"https://{account}.blob.core.windows.net"
            self.queue = QueueClient(queue_uri, QUEUE, **queue_args)
            self.poison = QueueClient(queue_uri, POISON_QUEUE, **queue_args)
            self.table = TableClient(table_uri, TABLE, **table)
            self.payloads = ContainerClient(blob_uri, PAYLOAD_CONTAINER, **storage)
        self.runstates = RunStateStore(self.table)

    def ensure(self) -> None:
        """Create what is missing (Azurite starts empty; in Azure the Bicep creates them)."""
        for create in (
            self.queue.create_queue,
            self.poison.create_queue,
            self.table.create_table,
            self.payloads.create_container,
        ):
            with contextlib.suppress(ResourceExistsError):
                create()

    def enqueue(self, message: dict[str, Any], delay: float = 0, *, poison: bool = False) -> None:
        """Send a message; one over the inline limit goes to a blob and the message points at it."""
        text = json.dumps(message, separators=(",", ":"))
        if len(text) > MAX_INLINE_MESSAGE and "state" in message:
            name = f"{message['reportId']}-{uuid.uuid4().hex}.json"
            self.payloads.upload_blob(name, json.dumps(message["state"]), overwrite=True)
            text = json.dumps(
                {**{k: v for k, v in message.items() if k != "state"}, "statePayload": name},
                separators=(",", ":"),
            )
        queue = self.poison if poison else self.queue
        # time_to_live=-1: an accepted report never expires out of the queue unseen.
        queue.send_message(text, visibility_timeout=math.ceil(delay) or None, time_to_live=-1)

    def load_state(self, message: dict[str, Any]) -> dict[str, Any]:
        if "state" in message:
            return message["state"]
        blob = self.payloads.download_blob(message["statePayload"]).readall()
        return json.loads(blob)

    def forget_payload(self, message: dict[str, Any]) -> None:
        if "statePayload" in message:
            with contextlib.suppress(ResourceNotFoundError):
                self.payloads.delete_blob(message["statePayload"])


def write_if_unchanged(table: Any, row: Any | None, entity: dict[str, Any]) -> bool:
    """Create `entity`, or merge it into `row` if nobody changed `row` since it was read.

    False means another writer got there first: the caller reads again and decides again.
    """
    try:
        if row is None:
            table.create_entity(entity)
        else:
            table.update_entity(
                entity,
                mode="merge",
                etag=row.metadata["etag"],
                match_condition=MatchConditions.IfNotModified,
            )
    except (ResourceExistsError, ResourceModifiedError):
        return False
    return True


class RunStateStore:
    """Newest accepted and delivered versions per (script, device), and a per-pair write lease."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def _read(self, script_id: str, device_id: str) -> Any | None:
        try:
            return self.table.get_entity(partition_key=script_id, row_key=device_id)
        except ResourceNotFoundError:
            return None

    def _write(self, entity: Any, fields: dict[str, Any], create: bool) -> bool:
        keys = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"]}
        return write_if_unchanged(self.table, None if create else entity, {**keys, **fields})

    def newest_accepted(self, script_id: str, device_id: str) -> str | None:
        row = self._read(script_id, device_id)
        return None if row is None else row.get("AcceptedAt") or None

    def accept(
        self, script_id: str, device_id: str, version: str, report_id: str, detection_state: str
    ) -> Acceptance:
        """Record a report as the newest accepted one, unless an equal or newer one already is."""
        for _ in range(_ETAG_RETRIES):
            row = self._read(script_id, device_id)
            current = "" if row is None else row.get("AcceptedAt") or ""
            if current > version:
                return Acceptance.STALE
            if current == version:
                return Acceptance.DUPLICATE
            fields = {
                "AcceptedAt": version,
                "AcceptedReportId": report_id,
                "AcceptedDetectionState": detection_state,
            }
            base = row if row is not None else {"PartitionKey": script_id, "RowKey": device_id}
            if self._write(base, fields, create=row is None):
                return Acceptance.NEW
        raise ResourceModifiedError("run-state row kept changing; try again")

    def claim(
        self, script_id: str, device_id: str, version: str, lease_seconds: float
    ) -> ClaimResult:
        """Take the pair's write lease for this version, so no older write can land after it."""
        owner = uuid.uuid4().hex
        for _ in range(_ETAG_RETRIES):
            now = time.time()
            row = self._read(script_id, device_id)
            accepted = "" if row is None else row.get("AcceptedAt") or ""
            delivered = "" if row is None else row.get("DeliveredAt") or ""
            if accepted > version:
                return ClaimResult(Claim.SUPERSEDED)
            if delivered >= version:
                return ClaimResult(Claim.DELIVERED)
            lease_until = 0.0 if row is None else float(row.get("LeaseUntil") or 0)
            if lease_until > now:
                return ClaimResult(Claim.BUSY, wait=lease_until - now)
            # AcceptedAt also heals here: ingest may have queued the report and then failed to
            # record it.
            fields = {"AcceptedAt": version, "LeaseOwner": owner, "LeaseUntil": now + lease_seconds}
            base = row if row is not None else {"PartitionKey": script_id, "RowKey": device_id}
            if self._write(base, fields, create=row is None):
                return ClaimResult(Claim.GRANTED, owner)
        return ClaimResult(Claim.BUSY, wait=1.0)

    def finish(
        self,
        script_id: str,
        device_id: str,
        version: str,
        owner: str,
        *,
        delivered: bool,
        outcome: str,
        reason: str,
        keep_lease: bool = False,
    ) -> None:
        """Record the outcome and end the lease (or let it run out when a write may still land)."""
        for _ in range(_ETAG_RETRIES):
            row = self._read(script_id, device_id)
            if row is None or row.get("LeaseOwner") != owner:
                return  # the lease expired and another writer took over
            fields: dict[str, Any] = {"LastOutcome": outcome, "LastReason": reason}
            if delivered and version > (row.get("DeliveredAt") or ""):
                fields["DeliveredAt"] = version
            if not keep_lease:
                fields |= {"LeaseOwner": "", "LeaseUntil": 0.0}
            if self._write(row, fields, create=False):
                return
