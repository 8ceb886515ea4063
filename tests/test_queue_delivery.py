"""Queue mode: store first and answer 202, deliver through the queue trigger, never regress."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from tests.stack import (
    DEVICE,
    INGEST,
    ROOT,
    SCRIPT,
    Emulator,
    HostFactory,
    Process,
    StorageView,
    report_body,
    wait_for,
)

RUN_STATE = f"{SCRIPT}:{DEVICE}"


def finished(minutes_ago: float) -> str:
    moment = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def version(minutes_ago: float, **execution: Any) -> dict[str, Any]:
    body = report_body()
    body["execution"] = {"exitCode": 0, "stdout": "{}", "finishedAt": finished(minutes_ago)}
    body["execution"].update(execution)
    return body


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def post(host: Process, body: dict[str, Any]) -> requests.Response:
    return requests.post(host.url + INGEST, json=body, timeout=30)


def state_of(graph: Emulator) -> dict[str, Any] | None:
    states = [s for s in graph.states() if s["runStateId"] == RUN_STATE]
    return states[0] if states else None


def patches(graph: Emulator) -> list[dict[str, Any]]:
    return [r for r in graph.requests() if r["method"] == "PATCH"]


def test_report_is_queued_with_202_and_delivered_by_the_queue_trigger(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    host = start_queue_host()
    body = version(1)
    response = post(host, body)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    state = wait_for(lambda: state_of(graph))
    assert moment(state["lastStateUpdateDateTime"]) == moment(body["execution"]["finishedAt"])
    row = wait_for(lambda: (r := storage.row(SCRIPT, DEVICE)) and r.get("DeliveredAt") and r)
    assert row["AcceptedAt"] == row["DeliveredAt"]
    assert row["LastOutcome"] == "delivered"


def test_older_and_duplicate_reports_are_ignored_at_ingest(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    host = start_queue_host()
    newer, older = version(1), version(5, exitCode=1)
    assert post(host, newer).status_code == 202
    stale = post(host, older)
    assert stale.status_code == 200
    assert stale.json()["status"] == "ignored"
    assert stale.json()["reason"] == "stale"
    duplicate = post(host, newer)
    assert duplicate.status_code == 200
    assert duplicate.json()["reason"] == "duplicate"
    wait_for(lambda: state_of(graph))
    time.sleep(1)
    written = [moment(p["body"]["lastStateUpdateDateTime"]) for p in patches(graph)]
    assert written == [moment(newer["execution"]["finishedAt"])]


def test_answers_202_without_waiting_for_a_stalled_graph(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    host = start_queue_host(BRIDGE_GRAPH_READ_TIMEOUT="30")
    stall = 8.0
    graph.post("faults", [{"delay": stall}])
    timings = []
    for n in range(5):
        started = time.monotonic()
        assert post(host, version(10 - n)).status_code == 202
        timings.append(time.monotonic() - started)
    # Loose on purpose: an order of magnitude below the stall, not a tight timing.
    assert max(timings) < stall / 10


def test_newer_versions_coalesce_and_the_newest_wins(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    from shared.api import ingest
    from shared.runtime import Bridge
    from shared.settings import Settings

    graph, _ = emulators
    # Six versions are accepted and queued before any delivery runs (an ingest-only bridge in
    # this process), so the backlog is certain, not a matter of timing.
    settings = Settings(AzureWebJobsStorage=storage.connection_string)
    accepting = Bridge(settings=settings, graph=None)  # type: ignore[arg-type]  # no delivery
    bodies = [version(10 - n, stdout=f'{{"v":{n}}}') for n in range(6)]
    for body in bodies:
        raw = json.dumps(body).encode()
        answer = ingest("POST", {"Content-Type": "application/json"}, raw, bridge=accepting)
        assert answer.status == 202
    assert storage.queued() == 6
    start_queue_host()
    newest = bodies[-1]["execution"]["stdout"]
    wait_for(
        lambda: storage.queued() == 0 and (s := state_of(graph)) and s["scriptOutput"] == newest
    )
    writes = [p["body"]["scriptOutput"] for p in patches(graph) if p["applied"]]
    assert writes == [newest]  # the five older versions were coalesced away, never written
    order = [int(w.split(":")[1].rstrip("}")) for w in writes]
    assert order == sorted(order), "an older report was written after a newer one"


def test_retry_after_is_honoured_before_the_next_attempt(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": 429, "retryAfter": "2.128", "count": 1}])
    host = start_queue_host()
    assert post(host, version(1)).status_code == 202
    wait_for(lambda: state_of(graph))
    first, second = patches(graph)[:2]
    assert first["status"] == 429 and second["status"] == 200
    gap = datetime.fromisoformat(second["time"]) - datetime.fromisoformat(first["time"])
    assert gap.total_seconds() >= 2.128


def test_a_401_refreshes_the_token_once_and_delivers(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, identity = emulators
    graph.post("faults", [{"status": 401, "code": "InvalidAuthenticationToken", "count": 1}])
    host = start_queue_host()
    assert post(host, version(1)).status_code == 202
    wait_for(lambda: state_of(graph))
    assert [p["status"] for p in patches(graph)] == [401, 200]
    assert len(identity.requests()) == 2


def test_permanent_refusal_goes_to_poison_with_reason_code_and_request_id(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": 400, "code": "No method match route template"}])
    host = start_queue_host()
    assert post(host, version(1)).status_code == 202
    [poisoned] = wait_for(storage.poison)
    assert poisoned["reason"] == "endpoint_unsupported"
    assert poisoned["error"]["code"] == "No method match route template"
    [call] = patches(graph)
    assert poisoned["error"]["requestId"] == call["request_id"]
    assert poisoned["report"]["deviceId"] == DEVICE
    assert poisoned["report"]["state"]["detectionState"] == "success"
    assert storage.row(SCRIPT, DEVICE)["LastReason"] == "endpoint_unsupported"


def test_replay_delivers_a_poisoned_report_once_the_cause_is_fixed(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": 403, "code": "Forbidden", "message": "role missing"}])
    other = report_body(deviceId="0f8fad5b-d9cb-469f-a165-70867728950e")
    host = start_queue_host()
    assert post(host, version(1)).status_code == 202
    wait_for(lambda: len(storage.poison()) == 1)
    graph.post("faults", [{"status": 400, "code": "No method match route template"}])
    assert post(host, other).status_code == 202
    wait_for(lambda: len(storage.poison()) == 2)
    graph.post("faults", [])  # the administrator grants the role

    command = [sys.executable, "-m", "shared", "replay", "--reason", "forbidden"]
    env = {"AzureWebJobsStorage": storage.connection_string, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert '"replayed": 1' in done.stdout

    wait_for(lambda: state_of(graph))
    [left] = storage.poison()
    assert left["reason"] == "endpoint_unsupported"


def test_storage_outage_answers_503_with_retry_after_and_never_2xx(
    start_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    closed = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;"
        "TableEndpoint=http://127.0.0.1:9/devstoreaccount1;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;"
    )
    host = start_host(BRIDGE_DELIVERY_MODE="queue", AzureWebJobsStorage=closed)
    response = post(host, version(1))
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert int(response.headers["Retry-After"]) >= 1
    assert "a2V5" not in response.text and "AccountKey" not in host.output
    assert graph.requests() == []


def test_a_report_that_keeps_failing_goes_to_poison_when_its_attempts_run_out(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    graph, _ = emulators
    graph.post("faults", [{"status": 503, "retryAfter": "1"}])
    host = start_queue_host(BRIDGE_MAX_ATTEMPTS="3")
    assert post(host, version(1)).status_code == 202
    [poisoned] = wait_for(storage.poison, timeout=60)
    assert poisoned["reason"] == "retries_exhausted"
    assert poisoned["lastReason"] == "server_error"
    assert poisoned["error"]["status"] == 503
    assert [p["status"] for p in patches(graph)] == [503, 503, 503]


def test_a_malformed_queue_message_is_poisoned_not_retried_forever(storage: StorageView) -> None:
    from shared.delivery import Delivery
    from shared.destinations.runstates import RunStates
    from shared.settings import Settings

    settings = Settings(AzureWebJobsStorage=storage.connection_string)
    never = None  # neither Graph nor the budget is reached for a malformed message
    delivery = Delivery(RunStates(never, settings), storage.storage, never, settings)  # type: ignore[arg-type]
    for text in ("not json", '{"schema": 1, "scriptId": "../x"}', '{"schema": 1}', "[]"):
        [outcome] = delivery.process(text)
        assert (outcome.outcome, outcome.reason) == ("poisoned", "malformed_message")
    assert [p["reason"] for p in storage.poison()] == ["malformed_message"] * 4
