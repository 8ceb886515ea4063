"""`python -m shared status`: what an on-call administrator sees, read from the local stack."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from tests.stack import (
    INGEST,
    ROOT,
    SCRIPT,
    Emulator,
    HostFactory,
    StorageView,
    report_body,
    wait_for,
)


def status(storage: StorageView, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"AzureWebJobsStorage": storage.connection_string, "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "shared", "status", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_status_shows_a_poisoned_report_a_queued_one_and_devices_by_state(
    start_queue_host: HostFactory, emulators: tuple[Emulator, Emulator], storage: StorageView
) -> None:
    import requests

    graph, _ = emulators
    host = start_queue_host()
    graph.post("faults", [{"status": 400, "code": "No method match route template", "count": 1}])
    refused = report_body(deviceId=str(uuid.uuid4()))
    assert requests.post(host.url + INGEST, json=refused, timeout=30).status_code == 202
    wait_for(lambda: len(storage.poison()) == 1)
    graph.post("faults", [{"status": 503, "retryAfter": "120", "count": 1}])
    waiting = report_body(deviceId=str(uuid.uuid4()))
    assert requests.post(host.url + INGEST, json=waiting, timeout=30).status_code == 202
    wait_for(lambda: len([r for r in graph.requests() if r["method"] == "PATCH"]) == 2)
    delivered = report_body(deviceId=str(uuid.uuid4()))
    assert requests.post(host.url + INGEST, json=delivered, timeout=30).status_code == 202
    wait_for(lambda: len(graph.states()) == 1)

    done = status(storage, "--json")
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    graph_queue = facts["queues"]["graph"]
    assert graph_queue["enabled"] and graph_queue["queue"] == "compliance-results"
    assert graph_queue["depth"] == 1  # the report waiting out Graph's Retry-After
    assert graph_queue["poisoned"] == 1
    assert graph_queue["poisonedByReason"] == {"endpoint_unsupported": 1}
    assert facts["queues"]["logs"]["enabled"] is False
    assert facts["budget"]["gateOpen"] is True
    assert facts["budget"]["writesThisWindow"] >= 1
    assert facts["scripts"][SCRIPT]["accepted"] == {"success": 3}
    assert facts["scripts"][SCRIPT]["graph"] == {"success": 1}

    text = status(storage)
    assert text.returncode == 0, text.stderr
    assert "compliance-results: 1 queued" in text.stdout
    assert "poison 1 (endpoint_unsupported 1)" in text.stdout
    assert "429 gate: open" in text.stdout
    assert f"{SCRIPT} graph: success 1" in text.stdout


def test_status_of_a_bridge_with_no_reports_lists_no_scripts(storage: StorageView) -> None:
    done = status(storage, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["scripts"] == {}


def test_operator_commands_create_nothing_where_the_deployment_made_nothing() -> None:
    from devstack import azurite

    empty = azurite.start()  # a storage account with no queue, table or container
    try:
        env = {"AzureWebJobsStorage": empty.connection_string, "PATH": "/usr/bin:/bin"}
        for command in (["status"], ["replay"], ["replay", "--dry-run"]):
            done = subprocess.run(
                [sys.executable, "-m", "shared", *command],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 1, done.stdout + done.stderr
            assert "does not exist" in done.stderr
            assert "Traceback" not in done.stderr
        from azure.data.tables import TableServiceClient
        from azure.storage.blob import BlobServiceClient
        from azure.storage.queue import QueueServiceClient

        connection = empty.connection_string
        assert list(QueueServiceClient.from_connection_string(connection).list_queues()) == []
        assert list(TableServiceClient.from_connection_string(connection).list_tables()) == []
        blobs = BlobServiceClient.from_connection_string(connection)
        assert list(blobs.list_containers()) == []
    finally:
        empty.stop()
