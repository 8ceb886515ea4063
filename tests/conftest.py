"""Fixtures: emulators in threads (real HTTP on 127.0.0.1) and function hosts as processes."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from devstack import azurite, graph, identity, logs
from devstack.serving import start_in_thread
from tests.stack import (
    NO_QUEUE_TRIGGERS,
    Emulator,
    HostFactory,
    LogsEmulator,
    Process,
    StorageView,
    host_env,
    start_process,
)

IDENTITY_HEADER = secrets.token_urlsafe(16)


@pytest.fixture(scope="session")
def graph_emulator() -> Iterator[Emulator]:
    url, stop = start_in_thread(graph.build_server(0, scripts=[], write_limit="0", faults=[]))
    yield Emulator(url)
    stop()


@pytest.fixture(scope="session")
def identity_emulator() -> Iterator[Emulator]:
    url, stop = start_in_thread(identity.build_server(0, header=IDENTITY_HEADER))
    yield Emulator(url)
    stop()


@pytest.fixture(scope="session")
def logs_emulator() -> Iterator[LogsEmulator]:
    """The Logs Ingestion emulator with its default rule and stream; reset it in each test."""
    url, stop = start_in_thread(logs.build_server(0, faults=[], request_limit="0"))
    yield LogsEmulator(url)
    stop()


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[azurite.Azurite]:
    server = azurite.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def storage_view(azurite_server: azurite.Azurite) -> StorageView:
    return StorageView(azurite_server.connection_string)


@pytest.fixture
def storage(storage_view: StorageView) -> StorageView:
    """The bridge's queues, blobs and run-state table in Azurite, emptied for this test."""
    storage_view.clear()
    return storage_view


@pytest.fixture
def emulators(
    graph_emulator: Emulator, identity_emulator: Emulator, storage: StorageView
) -> tuple[Emulator, Emulator]:
    """Both emulators and storage, reset to a clean state for this test."""
    graph_emulator.reset()
    identity_emulator.reset()
    return graph_emulator, identity_emulator


@pytest.fixture(scope="session")
def host(
    graph_emulator: Emulator, identity_emulator: Emulator, storage_view: StorageView
) -> Iterator[Process]:
    """One function host with default settings, shared by the tests that need no special ones."""
    process = start_process(
        ["host", "--port", "0"],
        {
            **host_env(
                graph_emulator.url,
                identity_emulator.url,
                IDENTITY_HEADER,
                AzureWebJobsStorage=storage_view.connection_string,
            ),
            **NO_QUEUE_TRIGGERS,
        },
    )
    yield process
    process.stop()


@pytest.fixture
def start_host(
    graph_emulator: Emulator, identity_emulator: Emulator, storage_view: StorageView
) -> Iterator[HostFactory]:
    """Start a host with extra settings; each is stopped by PID at the end of the test."""
    started: list[Process] = []

    def factory(**settings: str) -> Process:
        settings.setdefault("AzureWebJobsStorage", storage_view.connection_string)
        env = host_env(graph_emulator.url, identity_emulator.url, IDENTITY_HEADER, **settings)
        process = start_process(["host", "--port", "0"], env)
        started.append(process)
        return process

    yield factory
    for process in started:
        process.stop()


@pytest.fixture
def start_queue_host(start_host: HostFactory, storage: StorageView) -> HostFactory:
    """A host in queue mode on Azurite, its queue trigger polling like the Functions host."""

    def factory(**settings: str) -> Process:
        return start_host(BRIDGE_DELIVERY_MODE="queue", **settings)

    return factory


@pytest.fixture
def identity_env(identity_emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{identity_emulator.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
