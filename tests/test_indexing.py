"""function_app.py indexed the way the real Python worker indexes it, once per auth mode.

On Python 3.13 and later the Functions host's proxy worker loads `azure_functions_runtime`
(PyPI azure-functions-runtime). Its worker-init handler loads the binding registry and then
`load_function_metadata`: `loader.index_function_app` imports the script named by
PYTHON_SCRIPT_FILE_NAME, requires exactly one FunctionApp and calls `get_functions()`;
`loader.process_indexed_function` validates each function in the worker's own registry (binding
directions, parameter types, return bindings) and builds the metadata the host receives, with each
function's raw binding JSON. Those same calls run here, in a fresh interpreter per mode, since the
app reads BRIDGE_AUTH_MODE at import time. The only stand-in is the host's gRPC message classes
(`protos`), which the host hands the worker: plain records here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.bicep_types import Template, properties

ROOT = Path(__file__).resolve().parent.parent

# The one place the queue triggers are listed: function name -> queue it listens on. One per
# destination queue (compliance-results for graph; compliance-logs, compliance-entra when the
# destinations land in function_app.py): extend this mapping, every assertion follows.
# One queue trigger per destination (shared.settings.QUEUES).
QUEUE_FUNCTIONS = {
    "deliver_graph": "compliance-results",
    "deliver_logs": "compliance-logs",
    "deliver_entra": "compliance-entra",
}
ALL_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}
HTTP_FUNCTIONS = {
    "ingest": ("v1/compliance-script-results", ALL_METHODS),
    "health": ("health", {"GET"}),
}
STORAGE_CONNECTION = "AzureWebJobsStorage"

# BRIDGE_AUTH_MODE -> the ingest route's auth level (DESIGN "Device authentication"): the route is
# anonymous to the platform only when the modes include a bridge-side proof (certificate or hmac);
# blank means the default, function. None: the setting is absent.
INGEST_LEVEL = {
    None: "FUNCTION",
    "": "FUNCTION",
    " ": "FUNCTION",
    "function": "FUNCTION",
    "hmac": "ANONYMOUS",
    "certificate": "ANONYMOUS",
    # Listing `function` keeps the platform's key check on: all listed proofs are required.
    "certificate,function": "FUNCTION",
}

_INDEX = """
import json, sys, types
sys.path.insert(0, {root!r})
from azure_functions_runtime import handle_event
from azure_functions_runtime.bindings.meta import load_binding_registry


class BindingInfo:
    # The host's enums: Direction (in, out, inout) and DataType (undefined, string, binary, stream).
    out, inout = 1, 2
    undefined = 0

    def __init__(self, **fields):
        self.__dict__.update(fields)


class Message:
    def __init__(self, **fields):
        self.__dict__.update(fields)


protos = types.SimpleNamespace(
    BindingInfo=BindingInfo, RpcFunctionMetadata=Message, RpcRetryOptions=Message
)
# What worker_init_request does before it answers the host.
handle_event.protos = protos
load_binding_registry()
handle_event.load_function_metadata({root!r}, caller_info="test_indexing")
metadata = handle_event._metadata_result
app = sys.modules["function_app"].app
print(json.dumps({{
    "app_auth_level": app.auth_level.name,
    "functions": {{
        m.name: [json.loads(raw) for raw in m.raw_bindings] for m in metadata
    }},
}}))
"""


@cache
def index(auth_mode: str | None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    if auth_mode is not None:
        env["BRIDGE_AUTH_MODE"] = auth_mode
    code = _INDEX.format(root=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def triggers(indexed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = {}
    for name, bindings in indexed["functions"].items():
        (trigger,) = [b for b in bindings if b["type"].endswith("Trigger")]
        found[name] = trigger
    return found


MODES = list(INGEST_LEVEL)
MODE_IDS = [repr(mode) for mode in MODES]


def test_the_indexer_is_the_real_worker_on_the_runtime_python() -> None:
    import azure_functions_runtime

    assert sys.version_info[:2] >= (3, 13), "the proxy worker indexes only on Python 3.13+"
    assert Path(azure_functions_runtime.__file__).parent.name == "azure_functions_runtime"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_functions_and_trigger_types(mode: str | None) -> None:
    found = triggers(index(mode))
    assert set(found) == set(HTTP_FUNCTIONS) | set(QUEUE_FUNCTIONS)
    for name in HTTP_FUNCTIONS:
        assert found[name]["type"] == "httpTrigger"
    for name in QUEUE_FUNCTIONS:
        assert found[name]["type"] == "queueTrigger"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_routes_and_methods(mode: str | None) -> None:
    found = triggers(index(mode))
    for name, (route, methods) in HTTP_FUNCTIONS.items():
        assert found[name]["route"] == route
        assert {m.upper() for m in found[name]["methods"]} == methods
        # Every HTTP function answers through an http output binding ($return).
        outputs = [b for b in index(mode)["functions"][name] if b["direction"] == "OUT"]
        assert [(b["type"], b["name"]) for b in outputs] == [("http", "$return")]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_ingest_auth_level_follows_the_auth_mode(mode: str | None) -> None:
    assert triggers(index(mode))["ingest"]["authLevel"] == INGEST_LEVEL[mode]


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_app_default_auth_level_is_function(mode: str | None) -> None:
    # A route added later without an explicit level must not be anonymous by accident.
    assert index(mode)["app_auth_level"] == "FUNCTION"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_health_stays_anonymous(mode: str | None) -> None:
    # Probes carry no credentials; health names settings, never their values.
    assert triggers(index(mode))["health"]["authLevel"] == "ANONYMOUS"


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
def test_queue_names_and_connections(mode: str | None) -> None:
    found = triggers(index(mode))
    for name, queue in QUEUE_FUNCTIONS.items():
        assert found[name]["queueName"] == queue
        assert found[name]["connection"] == STORAGE_CONNECTION
        assert found[name]["direction"] == "IN"


def test_every_triggered_queue_and_its_poison_queue_is_declared_in_the_bicep() -> None:
    template = Template(ROOT / "infra" / "main.bicep", ROOT / "infra")
    declared = {
        template.literal(value)
        for _key, value, _node in properties(template, template.vars["destinationQueues"].body)
    }
    assert set(QUEUE_FUNCTIONS.values()) <= declared
    # storage.bicep adds <queue>-poison for each, where the host dead-letters.
    storage = (ROOT / "infra" / "app" / "storage.bicep").read_text(encoding="utf-8")
    assert "map(queueNames, queue => '${queue}-poison')" in storage
