"""Driving `shared.delivery.Delivery` in-process against Azurite and the Graph emulator."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from shared import messages
from shared.delivery import Delivery
from shared.destinations.runstates import RunStates
from shared.graph import GraphClient, make_credential
from shared.mapping import map_report
from shared.models import ComplianceReport
from shared.pacing import SharedBudget
from shared.settings import Settings
from tests.stack import CLIENT_ID, StorageView, report_body


class Recorder:
    """Every message the delivery sends back, with the delay it asked for; sent at once."""

    def __init__(self, storage: StorageView) -> None:
        self.storage = storage.storage
        self.sent: list[tuple[dict[str, Any], float, bool]] = []
        real = self.storage.enqueue

        def enqueue(message: dict[str, Any], delay: float = 0, *, poison: bool = False) -> None:
            self.sent.append((message, delay, poison))
            real(message, 0, poison=poison)

        self.storage.enqueue = enqueue  # type: ignore[method-assign]

    def next_text(self) -> str | None:
        queue = self.storage.queue("graph")
        for received in queue.receive_messages(max_messages=1, visibility_timeout=30):
            queue.delete_message(received)
            return received.content
        return None


def make_delivery(
    storage: StorageView, graph_url: str, **settings: Any
) -> tuple[Delivery, Settings]:
    values = {
        "AzureWebJobsStorage": storage.connection_string,
        "GRAPH_BASE_URL": f"{graph_url}/beta",
        "AZURE_CLIENT_ID": CLIENT_ID,
        **settings,
    }
    config = Settings.from_env(values)
    client = GraphClient(config.graph_url, config.graph_scope, make_credential(CLIENT_ID))
    budget = SharedBudget(
        storage.storage.table,
        config.graph_writes_per_second,
        refresh_interval=config.refresh_interval.total_seconds(),
    )
    return Delivery(RunStates(client, config), storage.storage, budget, config), config


def queued(config: Settings, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    report = ComplianceReport.model_validate(report_body(**overrides), context={"now": now})
    state = map_report(
        report,
        received_at=now,
        script_interval=config.script_interval,
        max_output_chars=config.max_output_chars,
    )
    return messages.build(
        "graph",
        report_id=report.report_id or uuid.uuid4().hex,
        script_id=report.script_id,
        device_id=report.device_id,
        state=state,
        received_at=now,
    )
