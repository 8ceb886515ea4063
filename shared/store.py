"""Azure Storage: the destination queues, the claim-check blobs, and the clients of all three.

The run-state table's rows and their rules live in `shared.runstate_table`; this module builds
the process's clients and moves messages and claim-check payloads.
"""

from __future__ import annotations

import contextlib
import json
import math
import uuid
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from shared.runstate_table import TABLE, RunStateStore
from shared.settings import QUEUES, Settings

__all__ = [
    "MAX_INLINE_MESSAGE",
    "PAYLOAD_CONTAINER",
    "Storage",
    "poison_queue",
]

PAYLOAD_CONTAINER = "compliance-payloads"
# A queue message holds 64 KiB after base64; larger reports travel as a blob (claim check).
MAX_INLINE_MESSAGE = 45_000


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
