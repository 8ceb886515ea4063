"""The `entra` destination: the detection state in an Entra device's extension attribute.

Conditional Access device filters and dynamic groups read `extensionAttribute1..15`. The device
object is found from the Intune managedDevice id (its `azureADDeviceId`, then the device whose
`deviceId` it is) and cached in the run-state row and in this process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from urllib.parse import quote

from shared.destinations.base import Item, Pace, Written
from shared.graph import GraphClient
from shared.ids import canonical_guid, is_guid
from shared.outcomes import CallResult, Outcome
from shared.settings import Settings

__all__ = ["EntraAttributes"]

_CACHE = "ObjectId"
_MAX_CACHED = 100_000


class EntraAttributes:
    name = "entra"
    ordered = True
    paced = True  # the same app, so the same Graph write budget
    batch = 1

    def __init__(self, graph: GraphClient, settings: Settings) -> None:
        self.graph = graph
        self.beta = settings.graph_url
        self.v1 = settings.graph_v1_url
        self.attributes = settings.entra_attributes
        self._objects: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def wants(self, script_id: str) -> bool:
        return script_id in self.attributes

    def write(self, items: list[Item], pace: Pace) -> list[Written]:
        return [self._write(item, pace) for item in items]

    def _write(self, item: Item, pace: Pace) -> Written:
        script_id, device_id = item.message["scriptId"], item.message["deviceId"]
        number = self.attributes.get(script_id)
        if number is None:
            return Written(CallResult(Outcome.PERMANENT, "script_not_mapped"))
        cached = item.row.col(self.name, _CACHE) if item.row is not None else None
        found = cached or self._cached(device_id) or self.lookup(device_id)
        if isinstance(found, CallResult):
            return Written(found)
        object_id = canonical_guid(found)
        value = item.state["detectionState"]
        body = {"extensionAttributes": {f"extensionAttribute{number}": value}}
        result, _ = self.graph.call("PATCH", f"{self.v1}/devices/{object_id}", body, pace=pace)
        if result.status == 404:
            self._forget(device_id)
            return Written(result, {_CACHE: ""})
        return Written(result, {_CACHE: object_id})

    def lookup(self, device_id: str) -> str | CallResult:
        """managedDevice -> azureADDeviceId -> the Entra device object's id."""
        device_id = canonical_guid(device_id)
        managed = f"{self.beta}/deviceManagement/managedDevices/{device_id}"
        result, data = self.graph.call("GET", f"{managed}?$select=azureADDeviceId")
        if result.status == 404:
            return _refused("device_not_found", result)
        if result.outcome is not Outcome.DELIVERED:
            return result
        aad = data.get("azureADDeviceId") if isinstance(data, dict) else None
        if not is_guid(aad) or aad == "00000000-0000-0000-0000-000000000000":
            return _refused("device_not_registered", result)
        query = quote(f"deviceId eq '{canonical_guid(aad)}'", safe="'")
        result, data = self.graph.call("GET", f"{self.v1}/devices?$filter={query}&$select=id")
        if result.outcome is not Outcome.DELIVERED:
            return result
        values = data.get("value") if isinstance(data, dict) else None
        ids = [v.get("id") for v in values or [] if isinstance(v, dict)]
        if not ids or not is_guid(ids[0]):
            return _refused("entra_device_not_found", result)
        self._remember(device_id, ids[0])
        return ids[0]

    def _cached(self, device_id: str) -> str | None:
        with self._lock:
            return self._objects.get(device_id)

    def _remember(self, device_id: str, object_id: str) -> None:
        with self._lock:
            self._objects[device_id] = object_id
            self._objects.move_to_end(device_id)
            if len(self._objects) > _MAX_CACHED:
                self._objects.popitem(last=False)

    def _forget(self, device_id: str) -> None:
        with self._lock:
            self._objects.pop(device_id, None)


def _refused(reason: str, result: CallResult) -> CallResult:
    """A device Intune or Entra does not know: permanent, with Graph's ids for the operator."""
    return CallResult(
        Outcome.PERMANENT,
        reason,
        status=result.status,
        error_code=result.error_code,
        request_id=result.request_id,
        client_request_id=result.client_request_id,
    )
