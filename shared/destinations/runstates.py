"""The `graph` destination: PATCH the script's `deviceRunStates` entry for the device.

The run-state id is never taken from a device: it is built from `BRIDGE_RUN_STATE_ID_TEMPLATE`,
or, with `lookup`, found by listing the script's run states filtered by the device and cached in
the run-state row.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from shared.destinations.base import Item, Pace, Written
from shared.graph import GraphClient
from shared.ids import canonical_guid
from shared.outcomes import CallResult, Outcome
from shared.settings import LOOKUP, Settings

__all__ = ["RunStates", "run_state_id"]

_CACHE = "RunStateId"


def run_state_id(template: str, script_id: str, device_id: str) -> str:
    """Server-side only: a device never chooses which run state it writes."""
    return template.replace("{scriptId}", script_id).replace("{deviceId}", device_id)


class RunStates:
    name = "graph"
    ordered = True
    paced = True
    batch = 1

    def __init__(self, graph: GraphClient, settings: Settings) -> None:
        self.graph = graph
        self.template = settings.run_state_id_template
        self.fallback = settings.run_state_lookup_fallback

    def wants(self, script_id: str) -> bool:
        return True

    def write(self, items: list[Item], pace: Pace) -> list[Written]:
        return [self._write(item, pace) for item in items]

    def _write(self, item: Item, pace: Pace) -> Written:
        script_id, device_id = item.message["scriptId"], item.message["deviceId"]
        cached = item.row.col(self.name, _CACHE) if item.row is not None else None
        if self.template != LOOKUP:
            key: str | CallResult = run_state_id(self.template, script_id, device_id)
        else:
            key = cached or self.lookup(script_id, device_id)
        if isinstance(key, CallResult):
            return Written(key)
        try:
            result = self.graph.patch_run_state(script_id, key, item.state, pace)
        except ValueError:  # a listed id with characters no Graph key may have
            return Written(CallResult(Outcome.PERMANENT, "run_state_id_invalid"), {_CACHE: ""})
        if cached and result.status == 404:
            # The cached id no longer names a run state: look it up afresh next time.
            return Written(result, {_CACHE: ""})
        return Written(result, {_CACHE: key} if self.template == LOOKUP else {})

    def lookup(self, script_id: str, device_id: str) -> str | CallResult:
        """The run-state id Graph lists for this device, or the fallback, or why there is none."""
        script_id, device_id = canonical_guid(script_id), canonical_guid(device_id)
        query = quote(f"managedDevice/id eq '{device_id}'", safe="/'")
        url = (
            f"{self.graph.base_url}/deviceManagement/deviceComplianceScripts/{script_id}"
            f"/deviceRunStates?$filter={query}&$select=id"
        )
        result, data = self.graph.call("GET", url)
        if result.outcome is not Outcome.DELIVERED:
            return result
        ids = _ids(data)
        if ids:
            return ids[0]
        if self.fallback:
            return run_state_id(self.fallback, script_id, device_id)
        return CallResult(
            Outcome.PERMANENT,
            "run_state_not_found",
            status=result.status,
            request_id=result.request_id,
            client_request_id=result.client_request_id,
        )


def _ids(data: Any) -> list[str]:
    values = data.get("value") if isinstance(data, dict) else None
    if not isinstance(values, list):
        return []
    return [v["id"] for v in values if isinstance(v, dict) and isinstance(v.get("id"), str)]
