"""Every queued message ends: delivered, ignored or poisoned within BRIDGE_MAX_ATTEMPTS tries.

These drive `shared.delivery.Delivery` against Azurite and the Graph emulator, and count what the
bridge sends back to the queue (the delay it asks for, and how often), not the wall clock.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.store import MAX_INLINE_MESSAGE
from tests.delivering import Recorder, make_delivery, queued
from tests.stack import DEVICE, SCRIPT, Emulator, StorageView, report_body


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

    def counted(horizon: float, **lane: Any) -> Any:
        slot = reserve(horizon, **lane)
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
    # Visible a second or two before its slot, so it writes on time rather than late.
    assert 0 < (again["slotAt"] - started) - delay <= 2.5
    assert graph.requests() == []


def test_two_reports_of_one_version_at_once_get_one_acceptance_and_one_duplicate(
    storage: StorageView,
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from shared.policy import Acceptance
    from shared.runstate_table import RunStateStore

    version = "2026-11-28T10:00:02.000000Z"
    both_read = threading.Barrier(2)

    def accept(report_id: str) -> Acceptance:
        # Two instances: both read the row before either writes (the race at ingest).
        store = RunStateStore(storage.storage.table)
        real_read, reads = store.read, []

        def read(*args: Any) -> Any:
            row = real_read(*args)
            reads.append(row)
            if len(reads) == 1:
                both_read.wait(timeout=10)
            return row

        store.read = read  # type: ignore[method-assign]
        return store.accept(SCRIPT, DEVICE, version, report_id, "success").acceptance

    with ThreadPoolExecutor(2) as pool:
        answers = sorted(pool.map(accept, ["first", "second"]))
    assert answers == [Acceptance.DUPLICATE, Acceptance.NEW]
    assert storage.row(SCRIPT, DEVICE)["AcceptedAt"] == version
