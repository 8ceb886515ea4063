"""Every queued message ends: delivered, ignored or poisoned within BRIDGE_MAX_ATTEMPTS tries.

These drive `shared.delivery.Delivery` against Azurite and the Graph emulator, and count what the
bridge sends back to the queue (the delay it asks for, and how often), not the wall clock.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared import messages
from shared.delivery import Delivery
from shared.destinations.runstates import RunStates
from shared.graph import GraphClient, make_credential
from shared.mapping import map_report
from shared.models import ComplianceReport
from shared.pacing import SharedBudget
from shared.settings import Settings
from shared.store import MAX_INLINE_MESSAGE
from tests.stack import CLIENT_ID, DEVICE, SCRIPT, Emulator, StorageView, report_body


@pytest.fixture
def identity_env(identity_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import IDENTITY_HEADER

    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{identity_emulator.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)


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
    budget = SharedBudget(storage.storage.table, config.graph_writes_per_second)
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


def test_a_fault_after_the_claim_ends_in_poison_within_max_attempts(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url, BRIDGE_MAX_ATTEMPTS="6")
    recorder = Recorder(storage)
    # A claim-checked report whose blob is gone: loading it raises after the claim.
    message = {**queued(config), "statePayload": "graph/gone.json"}
    message.pop("state")
    storage.storage.queue("graph").send_message(json.dumps(message))
    handled, dequeues = 0, {}
    outcomes = []
    while (text := recorder.next_text()) is not None and handled < 50:
        handled += 1
        # The host redelivers a message whose function raised, counting dequeues.
        key = text
        dequeues[key] = dequeues.get(key, 0) + 1
        try:
            outcomes += delivery.process(text, dequeues[key])
        except Exception:
            storage.storage.queue("graph").send_message(text)  # the crashed try keeps its lease
    assert handled < 50
    assert [o.reason for o in outcomes] == ["busy"] * 4 + ["retries_exhausted"]
    poisoned = storage.poison()
    assert [p["reason"] for p in poisoned] == ["retries_exhausted"]
    assert graph.requests() == []


def test_a_busy_pair_comes_back_once_when_the_lease_ends(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url)
    message = queued(config)
    held = storage.storage.runstates.claim(
        "graph", SCRIPT, DEVICE, "0000", "", lease_seconds=30, refresh_interval=0
    )
    assert held.owner
    recorder = Recorder(storage)
    [outcome] = delivery.process(json.dumps(message))
    assert (outcome.outcome, outcome.reason) == ("retried", "busy")
    [(again, delay, poison)] = recorder.sent
    assert not poison
    assert 29 <= delay <= 31  # when the lease ends, not a poll every second
    assert again["attempt"] == 1
    assert graph.requests() == []


def test_a_busy_pair_that_never_frees_ends_in_poison(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url, BRIDGE_MAX_ATTEMPTS="4")
    storage.storage.runstates.claim(
        "graph", SCRIPT, DEVICE, "0000", "", lease_seconds=600, refresh_interval=0
    )
    recorder = Recorder(storage)
    storage.storage.queue("graph").send_message(json.dumps(queued(config)))
    outcomes = []
    while (text := recorder.next_text()) is not None:
        outcomes += delivery.process(text)
    assert [o.outcome for o in outcomes] == ["retried", "retried", "retried", "poisoned"]
    [poisoned] = storage.poison()
    assert (poisoned["reason"], poisoned["lastReason"]) == ("retries_exhausted", "busy")


def test_a_huge_retry_after_defers_a_report_an_hour_at_most(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": 429, "retryAfter": "86400", "count": 1}])
    delivery, config = make_delivery(storage, graph.url)
    recorder = Recorder(storage)
    [outcome] = delivery.process(json.dumps(queued(config)))
    assert (outcome.outcome, outcome.reason) == ("retried", "throttled")
    [(_, delay, _)] = recorder.sent
    assert delay == 3600
    assert delivery.budget.gate() <= 3600


@pytest.mark.parametrize(("status", "reason"), [(501, "not_implemented"), (505, "http_version")])
def test_501_and_505_are_permanent(
    storage: StorageView,
    emulators: tuple[Emulator, Emulator],
    identity_env: None,
    status: int,
    reason: str,
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": status, "count": 1}])
    delivery, config = make_delivery(storage, graph.url)
    [outcome] = delivery.process(json.dumps(queued(config)))
    assert (outcome.outcome, outcome.reason) == ("poisoned", reason)
    [poisoned] = storage.poison()
    assert poisoned["error"]["status"] == status


def test_the_token_refresh_retry_takes_a_slot_of_the_write_budget(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": 401, "code": "InvalidAuthenticationToken", "count": 1}])
    delivery, config = make_delivery(storage, graph.url)
    slots: list[float] = []
    reserve = delivery.budget.reserve

    def counted(horizon: float, *, book_ahead: bool = False) -> Any:
        slot = reserve(horizon, book_ahead=book_ahead)
        slots.append(slot.wait)
        return slot

    delivery.budget.reserve = counted  # type: ignore[method-assign]
    [outcome] = delivery.process(json.dumps(queued(config)))
    assert outcome.outcome == "delivered"
    assert [r["status"] for r in graph.requests() if r["method"] == "PATCH"] == [401, 200]
    assert len(slots) == 2  # the first write and its token-refresh retry


def test_an_oversized_report_travels_as_a_blob_and_the_blob_goes_with_delivery(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url)
    big = "x" * (MAX_INLINE_MESSAGE + 100)
    execution = {**report_body()["execution"], "stdout": json.dumps({"blob": big})}
    storage.storage.enqueue(queued(config, execution=execution))
    [received] = storage.storage.queue("graph").receive_messages(max_messages=1)
    body = json.loads(received.content)
    assert "state" not in body and body["statePayload"].startswith("graph/")
    assert [b.name for b in storage.storage.payloads.list_blobs()] == [body["statePayload"]]
    [outcome] = delivery.process(received.content)
    assert outcome.outcome == "delivered"
    assert graph.states()[0]["scriptOutput"].endswith('"}')
    assert list(storage.storage.payloads.list_blobs()) == []


def test_a_superseded_oversized_report_leaves_no_blob(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url)
    big = json.dumps({"blob": "x" * (MAX_INLINE_MESSAGE + 100)})
    old = queued(config, execution={**report_body()["execution"], "stdout": big})
    storage.storage.enqueue(old)
    later = (datetime.now(UTC) - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    storage.storage.runstates.accept(SCRIPT, DEVICE, later.replace("Z", ".000000Z"), "n", "fail")
    [received] = storage.storage.queue("graph").receive_messages(max_messages=1)
    [outcome] = delivery.process(received.content)
    assert (outcome.outcome, outcome.reason) == ("ignored", "superseded")
    assert list(storage.storage.payloads.list_blobs()) == []
    assert graph.requests() == []


def test_a_claim_checked_poison_message_replays_and_delivers(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    from shared.replay import replay

    graph, _ = emulators
    graph.post("faults", [{"status": 400, "code": "BadRequest", "count": 1}])
    delivery, config = make_delivery(storage, graph.url)
    big = json.dumps({"blob": "y" * (MAX_INLINE_MESSAGE + 100)})
    storage.storage.enqueue(queued(config, execution={**report_body()["execution"], "stdout": big}))
    [received] = storage.storage.queue("graph").receive_messages(max_messages=1)
    storage.storage.queue("graph").delete_message(received)
    [outcome] = delivery.process(received.content)
    assert (outcome.outcome, outcome.reason) == ("poisoned", "bad_request")
    [poisoned] = storage.poison()
    assert "statePayload" in poisoned["report"]

    dry = replay(storage.storage, dry_run=True)
    assert (dry.replayed, dry.kept, dry.by_reason) == (0, 1, {"bad_request": 1})
    assert len(storage.poison()) == 1
    assert replay(storage.storage, {"bad_request"}).replayed == 1
    [again] = storage.storage.queue("graph").receive_messages(max_messages=1)
    [outcome] = delivery.process(again.content)
    assert outcome.outcome == "delivered"
    assert graph.states()[0]["scriptOutput"] == big
    assert list(storage.storage.payloads.list_blobs()) == []


def test_replay_moves_messages_the_host_itself_poisoned(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    from shared.replay import replay

    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url)
    # After maxDequeueCount the host moves the message as it was, with no envelope of ours.
    storage.storage.queue("graph", poison=True).send_message(json.dumps(queued(config)))
    result = replay(storage.storage, {"max_dequeue_count"})
    assert (result.replayed, result.by_destination) == (1, {"graph": 1})
    [again] = storage.storage.queue("graph").receive_messages(max_messages=1)
    [outcome] = delivery.process(again.content)
    assert outcome.outcome == "delivered"


def test_waiting_for_budget_books_a_slot_and_comes_back_for_it(
    storage: StorageView, emulators: tuple[Emulator, Emulator], identity_env: None
) -> None:
    graph, _ = emulators
    delivery, config = make_delivery(storage, graph.url, BRIDGE_GRAPH_WRITES_PER_SECOND="1")
    for _ in range(5):  # other instances took the next five seconds of budget
        delivery.budget.reserve(60, book_ahead=True)
    recorder = Recorder(storage)
    started = time.time()
    [outcome] = delivery.process(json.dumps(queued(config)))
    assert (outcome.outcome, outcome.reason) == ("retried", "budget")
    [(again, delay, _)] = recorder.sent
    assert again["slotAt"] >= started + 4
    assert abs(delay - (again["slotAt"] - started)) < 1
    assert graph.requests() == []
