"""Microsoft Graph beta emulator, faithful to the parts of Graph the bridge touches.

Bearer tokens from devstack.tokens are required and checked (audience, lifetime, app roles); the
``deviceComplianceScriptDeviceState`` schema, enum, ``@odata.type`` and read-only ``id`` are
enforced; errors have Graph's shape and correlation headers; Intune's per-app write throttle,
``$batch`` and fault injection (status, Retry-After, latency, dropped connections, the live
service's "No method match route template" refusal) are driven by settings or admin endpoints.
For the bridge's other Graph calls it also serves the ``deviceRunStates`` list (``$filter`` by
managedDevice, ``$select``) with run-state ids that can be made opaque, and, under /beta and /v1.0,
``managedDevices/{id}``, ``/devices?$filter=deviceId eq '...'`` and the app-only
``PATCH /devices/{id}`` of extension attributes (devstack.devices).

Run alone: ``python -m devstack.graph --port 7072``; the bridge's GRAPH_BASE_URL is ``<url>/beta``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from devstack import tokens
from devstack.devices import (
    GUID_RE,
    INSUFFICIENT,
    DeviceRegistry,
    RequestRefused,
    select,
    validate_device_patch,
)
from devstack.faults import (
    RETRY_AFTER_FORMATS,
    admit,
    format_retry_after,
    parse_limit,
    take_fault,
    validate_faults,
)
from devstack.serving import DevServer, JsonHandler, make_server, run_forever

ENTITY_TYPE = "#microsoft.graph.deviceComplianceScriptDeviceState"
STATE_TYPE = "deviceComplianceScriptDeviceState"
RUN_STATES = ("unknown", "success", "fail", "scriptError", "pending", "notApplicable")
DATETIME_PROPERTIES = ("lastStateUpdateDateTime", "expectedStateUpdateDateTime", "lastSyncDateTime")
STRING_PROPERTIES = ("scriptOutput", "scriptError")
PROPERTIES = ("detectionState", *DATETIME_PROPERTIES, *STRING_PROPERTIES)
DATETIME_RE = re.compile(
    r"^[0-9]{4,}-(0[1-9]|1[012])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"([.][0-9]{1,12})?(Z|[+-][0-9][0-9]:[0-9][0-9])$"
)
FILTER_RE = re.compile(r"^\s*managedDevice/id\s+eq\s+'([^']*)'\s*$")
DEVICE_FILTER_RE = re.compile(r"^\s*deviceId\s+eq\s+'([^']*)'\s*$")
WRITE_ROLES = (
    "DeviceManagementConfiguration.ReadWrite.All",
    "DeviceManagementManagedDevices.ReadWrite.All",
)
READ_ROLES = (
    *WRITE_ROLES,
    "DeviceManagementConfiguration.Read.All",
    "DeviceManagementManagedDevices.Read.All",
)
# Entra device objects: reading needs a Device or Directory read role, the PATCH a write one.
DEVICE_WRITE_ROLES = ("Device.ReadWrite.All", "Directory.ReadWrite.All")
DEVICE_READ_ROLES = (*DEVICE_WRITE_ROLES, "Device.Read.All", "Directory.Read.All")
WRITE_METHODS = ("PATCH", "POST", "PUT", "DELETE")
VERSIONS = ("beta", "v1.0")
RUN_STATE_ID_MODES = ("template", "opaque")
MAX_BATCH = 20
TRUE = ("1", "true", "yes", "on")
DIAGNOSTIC = json.dumps(
    {"ServerInfo": {"DataCenter": "Devstack", "Slice": "E", "Ring": "0", "ScaleUnit": "000"}}
)
DEFAULT_CODES = {
    400: "BadRequest",
    401: "InvalidAuthenticationToken",
    403: "Forbidden",
    404: "ResourceNotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    424: "FailedDependency",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def _iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Outcome:
    """One answer to a Graph request (a plain request or a batch item)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    applied: bool = False
    drop: bool = False


@dataclass
class Call:
    """One Graph request as the emulator processes it, with its correlation ids."""

    method: str
    path: str  # as sent, under the version segment, e.g. /deviceManagement/...
    query: dict[str, str]
    body: Any
    claims: dict[str, Any]
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_request_id: str | None = None
    batch_item_id: str | None = None
    epoch: int = 0  # the emulator's reset generation when the request arrived
    version: str = "beta"  # the version segment: beta or v1.0

    @property
    def full_path(self) -> str:
        return f"/{self.version}{self.path}"


def graph_error(status: int, code: str, message: str, call: Call) -> Outcome:
    """Graph's error body, with innerError carrying the correlation ids."""
    inner = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "request-id": call.request_id,
        "client-request-id": call.client_request_id or str(uuid.uuid4()),
    }
    return Outcome(status, {"error": {"code": code, "message": message, "innerError": inner}})


def _segments(path: str) -> list[str]:
    return [unquote(part) for part in path.strip("/").split("/")] if path.strip("/") else []


def _method_not_allowed(call: Call) -> Outcome:
    message = f"The HTTP method '{call.method}' is not allowed on this resource."
    return graph_error(405, "MethodNotAllowed", message, call)


def _no_run_state(call: Call, run_state_id: str) -> Outcome:
    message = f"Resource '{STATE_TYPE}' with id '{run_state_id}' was not found."
    return graph_error(404, "ResourceNotFound", message, call)


def _fresh_state(run_state_id: str) -> dict[str, Any]:
    """A run state Intune holds before any write: detectionState unknown, no timestamps."""
    return {"id": run_state_id, "detectionState": "unknown"} | dict.fromkeys(PROPERTIES[1:])


class GraphEmulator:
    """State, request log, throttle window and fault rules; one lock guards them all."""

    def __init__(
        self,
        audience: str,
        scripts: list[str],
        write_limit: tuple[int, float] | None,
        retry_after_format: str,
        faults: list[dict[str, Any]],
        *,
        run_state_ids: str = "template",
        auto_devices: bool = False,
        unknown_devices: list[str] | None = None,
    ) -> None:
        self.audience = audience
        self.lock = threading.Lock()
        self.scripts = {s.lower() for s in scripts}
        self.write_limit = write_limit
        self.retry_after_format = retry_after_format
        self.faults = faults
        self.run_state_ids = run_state_ids
        self.devices = DeviceRegistry(auto_devices, unknown_devices or [])
        self.states: dict[tuple[str, str], dict[str, Any]] = {}
        # Opaque run-state ids: one per (script, managedDevice) pair, in both directions.
        self.pair_ids: dict[tuple[str, str], str] = {}
        self.pair_devices: dict[tuple[str, str], str] = {}
        self.log: list[dict[str, Any]] = []
        self.windows: dict[str, deque[float]] = {}
        # A reset starts a new epoch: requests still in flight from before it (a slow fault)
        # neither change the states nor appear in the log, so tests stay independent.
        self.epoch = 0
        self.initial = (
            set(self.scripts),
            write_limit,
            retry_after_format,
            [dict(f) for f in faults],
            run_state_ids,
            auto_devices,
            set(self.devices.unknown),
        )

    # ---- admin -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the start-up settings and faults, with no states, devices, log or window."""
        with self.lock:
            scripts, self.write_limit, self.retry_after_format, faults = self.initial[:4]
            self.run_state_ids, auto, unknown = self.initial[4:]
            self.scripts = set(scripts)
            self.faults = [dict(f) for f in faults]
            self.devices = DeviceRegistry(auto, sorted(unknown))
            self.states.clear()
            self.pair_ids.clear()
            self.pair_devices.clear()
            self.log.clear()
            self.windows.clear()
            self.epoch += 1

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply an admin ``/_emulator/config`` body; raises ValueError on a bad one."""
        with self.lock:
            if "scripts" in body:
                scripts = body["scripts"] or []
                if not isinstance(scripts, list) or not all(GUID_RE.match(s) for s in scripts):
                    raise ValueError("scripts must be a list of GUIDs")
                self.scripts = {s.lower() for s in scripts}
            if "writeLimit" in body:
                self.write_limit = parse_limit(body["writeLimit"])
                self.windows.clear()
            if "retryAfterFormat" in body:
                if body["retryAfterFormat"] not in RETRY_AFTER_FORMATS:
                    raise ValueError(f"retryAfterFormat must be one of {RETRY_AFTER_FORMATS}")
                self.retry_after_format = body["retryAfterFormat"]
            if "runStateIds" in body:
                if body["runStateIds"] not in RUN_STATE_ID_MODES:
                    raise ValueError(f"runStateIds must be one of {RUN_STATE_ID_MODES}")
                self.run_state_ids = body["runStateIds"]
            if "autoRegisterDevices" in body:
                if not isinstance(body["autoRegisterDevices"], bool):
                    raise ValueError("autoRegisterDevices must be true or false")
                self.devices.auto_register = body["autoRegisterDevices"]
            if "unknownDevices" in body:
                unknown = body["unknownDevices"] or []
                if not isinstance(unknown, list) or not all(
                    isinstance(u, str) and GUID_RE.match(u) for u in unknown
                ):
                    raise ValueError("unknownDevices must be a list of GUIDs")
                self.devices.unknown = {u.lower() for u in unknown}
                for device_id in self.devices.unknown:
                    self.devices.devices.pop(device_id, None)
            return self.settings()

    def settings(self) -> dict[str, Any]:
        limit = self.write_limit
        return {
            "audience": self.audience,
            "scripts": sorted(self.scripts),
            "writeLimit": f"{limit[0]}/{limit[1]:g}" if limit else None,
            "retryAfterFormat": self.retry_after_format,
            "runStateIds": self.run_state_ids,
            "autoRegisterDevices": self.devices.auto_register,
            "unknownDevices": sorted(self.devices.unknown),
        }

    def set_faults(self, rules: Any) -> None:
        checked = validate_faults(rules)
        with self.lock:
            self.faults = checked

    def state_rows(self) -> list[dict[str, Any]]:
        with self.lock:
            return [
                {
                    "scriptId": sid,
                    "runStateId": rid,
                    "managedDeviceId": self._device_of(sid, rid),
                    **entity,
                }
                for (sid, rid), entity in self.states.items()
            ]

    def run_state_pairs(self) -> list[dict[str, str]]:
        with self.lock:
            return [
                {"scriptId": sid, "managedDeviceId": device, "runStateId": rid}
                for (sid, device), rid in self.pair_ids.items()
            ]

    def register_devices(self, body: Any) -> list[dict[str, Any]]:
        specs = body if isinstance(body, list) else [body]
        with self.lock:
            return [self.devices.register(spec).admin_view() for spec in specs]

    def device_rows(self) -> list[dict[str, Any]]:
        with self.lock:
            return [device.admin_view() for device in self.devices.devices.values()]

    def record(self, call: Call, outcome: Outcome) -> None:
        """Append to the request log; refused, faulted and batch-item requests included."""
        with self.lock:
            if call.epoch != self.epoch:
                return
            self.log.append(
                {
                    "seq": len(self.log) + 1,
                    "time": _iso_now(),
                    "method": call.method,
                    "path": call.full_path,
                    "query": dict(call.query),
                    "status": outcome.status,
                    "client_request_id": call.client_request_id,
                    "request_id": call.request_id,
                    "body": call.body if call.method in WRITE_METHODS else None,
                    "applied": outcome.applied,
                    "batch_item_id": call.batch_item_id,
                    "dropped": outcome.drop,
                }
            )

    # ---- request pipeline --------------------------------------------------------------------

    def take_fault(
        self, method: str, path: str, *, outer_batch: bool = False
    ) -> dict[str, Any] | None:
        """The first rule that matches and has applications left, decremented; None if none."""
        with self.lock:
            # A whole $batch is faulted only by rules that name it; otherwise its items are.
            return take_fault(
                self.faults, method, path, default_methods=WRITE_METHODS, require_match=outer_batch
            )

    def fault_outcome(self, rule: dict[str, Any], call: Call) -> Outcome | None:
        """Apply a fault rule: sleep, drop, or answer; None means carry on normally."""
        if rule.get("delay"):
            time.sleep(float(rule["delay"]))
        if rule.get("drop"):
            return Outcome(0, drop=True)
        status = rule.get("status")
        if not status:
            return None
        status = int(status)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        outcome = graph_error(
            status,
            rule.get("code") or DEFAULT_CODES.get(status, "UnknownError"),
            rule.get("message") or f"{phrase} (injected by the devstack Graph emulator).",
            call,
        )
        if rule.get("retryAfter") is not None:
            outcome.headers["Retry-After"] = str(rule["retryAfter"])
        return outcome

    def throttle(self, call: Call) -> Outcome | None:
        """Intune's per-app write budget: a sliding window counted per token appid."""
        if call.method not in WRITE_METHODS:
            return None
        with self.lock:
            if not self.write_limit:
                return None
            times = self.windows.setdefault(str(call.claims.get("appid")), deque())
            wait = admit(times, self.write_limit, time.monotonic())
            if not wait:
                return None
            style = self.retry_after_format
        outcome = graph_error(429, "TooManyRequests", "Too many requests.", call)
        outcome.headers["Retry-After"] = format_retry_after(wait, style)
        return outcome

    def process(self, call: Call) -> Outcome:
        """Authorize, fault, throttle, route and log one (already authenticated) request."""
        outcome = self._process(call)
        self.record(call, outcome)
        return outcome

    def _process(self, call: Call) -> Outcome:
        handler, needed, directory = self.resolve(call)
        roles = call.claims.get("roles") or []
        if not any(role in roles for role in needed):
            if directory:
                return graph_error(403, "Authorization_RequestDenied", INSUFFICIENT, call)
            return graph_error(
                403,
                "Forbidden",
                "Application is not authorized to perform this operation. Application must have "
                f"one of the following scopes: {', '.join(needed)}",
                call,
            )
        rule = self.take_fault(call.method, call.full_path)
        if rule is not None:
            faulted = self.fault_outcome(rule, call)
            if faulted is not None:
                return faulted
        throttled = self.throttle(call)
        if throttled is not None:
            return throttled
        return handler(call)

    # ---- routes ------------------------------------------------------------------------------

    def resolve(self, call: Call) -> tuple[Callable[[Call], Outcome], tuple[str, ...], bool]:
        """The handler for a request, the app roles it needs, and whether Entra ID answers it."""
        segments = _segments(call.path)
        write = call.method in WRITE_METHODS
        if segments[:1] == ["devices"] and len(segments) <= 2:
            return self.route_devices, DEVICE_WRITE_ROLES if write else DEVICE_READ_ROLES, True
        intune_roles = WRITE_ROLES if write else READ_ROLES
        if segments[:2] == ["deviceManagement", "managedDevices"] and len(segments) == 3:
            return self.route_managed_device, intune_roles, False
        if call.version != "beta" and segments[1:2] == ["deviceComplianceScripts"]:
            # deviceComplianceScripts exist in beta only.
            return self._no_segment("deviceComplianceScripts"), intune_roles, False
        return self.route, intune_roles, False

    @staticmethod
    def _no_segment(segment: str) -> Callable[[Call], Outcome]:
        def answer(call: Call) -> Outcome:
            message = f"Resource not found for the segment '{segment}'."
            return graph_error(400, "BadRequest", message, call)

        return answer

    def route(self, call: Call) -> Outcome:
        segments = _segments(call.path)
        prefix = ["deviceManagement", "deviceComplianceScripts"]
        if len(segments) < 3 or segments[:2] != prefix or len(segments) > 5:
            expected = [*prefix, None, "deviceRunStates"]
            mismatched = (
                s for s, want in zip(segments, expected, strict=False) if want and s != want
            )
            bad = next(mismatched, segments[-1] if segments else "")
            return self._no_segment(bad)(call)
        if len(segments) >= 4 and segments[3] != "deviceRunStates":
            return self._no_segment(segments[3])(call)
        allowed = {3: ("GET",), 4: ("GET",), 5: ("GET", "PATCH")}[len(segments)]
        if call.method not in allowed:
            return _method_not_allowed(call)
        script_id = segments[2]
        if not GUID_RE.match(script_id):
            return graph_error(
                400,
                "BadRequest",
                f"Invalid key '{script_id}': a deviceComplianceScript id is a GUID.",
                call,
            )
        script_id = script_id.lower()
        with self.lock:
            known = not self.scripts or script_id in self.scripts
        if not known:
            return graph_error(
                404,
                "ResourceNotFound",
                f"Resource 'deviceComplianceScript' with id '{script_id}' was not found.",
                call,
            )
        if len(segments) == 3:
            return Outcome(
                200, {"id": script_id, "displayName": f"Devstack compliance script {script_id}"}
            )
        if len(segments) == 4:
            return self.list_run_states(call, script_id)
        run_state_id = segments[4]
        if not run_state_id or "/" in run_state_id:
            return graph_error(
                400, "BadRequest", f"Invalid deviceRunStates key '{run_state_id}'.", call
            )
        if call.method == "GET":
            with self.lock:
                entity = self._run_state(script_id, run_state_id)
            if entity is None:
                return _no_run_state(call, run_state_id)
            return Outcome(200, self._entity_body(script_id, entity))
        return self.patch_run_state(call, script_id, run_state_id)

    @staticmethod
    def _entity_body(script_id: str, entity: dict[str, Any]) -> dict[str, Any]:
        context = (
            "https://graph.microsoft.com/beta/$metadata#deviceManagement/"
            f"deviceComplianceScripts('{script_id}')/deviceRunStates/$entity"
        )
        return {"@odata.context": context, **entity}

    def _device_of(self, script_id: str, run_state_id: str) -> str | None:
        """The managedDevice a run state belongs to (caller holds the lock)."""
        device = self.pair_devices.get((script_id, run_state_id))
        if device is None:
            prefix, _, rest = run_state_id.partition(":")
            if prefix.lower() == script_id and GUID_RE.match(rest):
                device = rest.lower()
        return device

    def _run_state(self, script_id: str, run_state_id: str) -> dict[str, Any] | None:
        """A stored state, or a fresh one for an opaque pair never written (caller holds lock)."""
        entity = self.states.get((script_id, run_state_id))
        if entity is None and (script_id, run_state_id) in self.pair_devices:
            entity = _fresh_state(run_state_id)
        return None if entity is None else dict(entity)

    def _pair_id(self, script_id: str, device_id: str) -> str | None:
        """The opaque run-state id of a pair Intune knows, made on first sight (lock held)."""
        if self.devices.managed(device_id) is None:
            return None
        key = (script_id, device_id)
        if key not in self.pair_ids:
            run_state_id = str(uuid.uuid4())
            self.pair_ids[key] = run_state_id
            self.pair_devices[(script_id, run_state_id)] = device_id
        return self.pair_ids[key]

    def list_run_states(self, call: Call, script_id: str) -> Outcome:
        flt = call.query.get("$filter")
        device = None
        if flt is not None:
            found = FILTER_RE.match(flt)
            if not found:
                return graph_error(
                    400, "BadRequest", f"Unsupported $filter expression: {flt!r}.", call
                )
            device = found.group(1).lower()
        with self.lock:
            if self.run_state_ids == "opaque":
                if device is not None and GUID_RE.match(device):
                    self._pair_id(script_id, device)
                # A device Intune no longer knows has no run states to list.
                known = self.devices.devices
                ids = [
                    rid
                    for (sid, dev), rid in self.pair_ids.items()
                    if sid == script_id and dev in known
                ]
            else:
                ids = [rid for (sid, rid) in self.states if sid == script_id]
            rows = [
                self._run_state(script_id, rid)
                for rid in ids
                if device is None or self._device_of(script_id, rid) == device
            ]
        try:
            rows = [select(row, call.query.get("$select"), STATE_TYPE) for row in rows if row]
        except RequestRefused as exc:
            return graph_error(exc.status, exc.code, exc.message, call)
        selected = f"({call.query['$select']})" if call.query.get("$select") else ""
        context = (
            "https://graph.microsoft.com/beta/$metadata#deviceManagement/"
            f"deviceComplianceScripts('{script_id}')/deviceRunStates{selected}"
        )
        return Outcome(200, {"@odata.context": context, "value": rows})

    def patch_run_state(self, call: Call, script_id: str, run_state_id: str) -> Outcome:
        problem = validate_patch_body(call.body)
        if problem:
            return graph_error(400, "BadRequest", problem, call)
        changes = {k: v for k, v in call.body.items() if k != "@odata.type"}
        with self.lock:
            if call.epoch != self.epoch:
                return Outcome(200, {}, applied=False)
            opaque = self.run_state_ids == "opaque"
            if opaque and (script_id, run_state_id) not in self.pair_devices:
                # With opaque ids only a run state Intune listed exists; a made-up key is unknown.
                return _no_run_state(call, run_state_id)
            entity = self.states.setdefault((script_id, run_state_id), _fresh_state(run_state_id))
            entity.update(changes)
            snapshot = dict(entity)
        return Outcome(200, self._entity_body(script_id, snapshot), applied=True)

    def route_managed_device(self, call: Call) -> Outcome:
        """``GET managedDevices/{id}``: the Intune device, whose azureADDeviceId names Entra's."""
        if call.method != "GET":
            return _method_not_allowed(call)
        managed_id = _segments(call.path)[2]
        if not GUID_RE.match(managed_id):
            message = f"Invalid key '{managed_id}': a managedDevice id is a GUID."
            return graph_error(400, "BadRequest", message, call)
        with self.lock:
            device = self.devices.managed(managed_id)
            entity = None if device is None else device.managed_device()
        if entity is None:
            message = f"Resource 'managedDevice' with id '{managed_id.lower()}' was not found."
            return graph_error(404, "ResourceNotFound", message, call)
        raw = call.query.get("$select")
        try:
            body = select(entity, raw, "managedDevice")
        except RequestRefused as exc:
            return graph_error(exc.status, exc.code, exc.message, call)
        selected = f"({raw})" if raw else ""
        context = (
            f"https://graph.microsoft.com/{call.version}/$metadata#deviceManagement/"
            f"managedDevices{selected}/$entity"
        )
        odata = {"@odata.context": context, "@odata.type": "#microsoft.graph.managedDevice"}
        return Outcome(200, {**odata, **body})

    def route_devices(self, call: Call) -> Outcome:
        """Entra device objects: the ``deviceId`` filter, one object, and its app-only PATCH."""
        segments = _segments(call.path)
        if len(segments) == 1:
            if call.method != "GET":
                return _method_not_allowed(call)
            return self.list_devices(call)
        if call.method not in ("GET", "PATCH"):
            return _method_not_allowed(call)
        object_id = segments[1]
        if not GUID_RE.match(object_id):
            message = f"Invalid object identifier '{object_id}'."
            return graph_error(400, "Request_BadRequest", message, call)
        attributes: dict[str, str | None] = {}
        if call.method == "PATCH":
            try:
                attributes = validate_device_patch(call.body)
            except RequestRefused as exc:
                return graph_error(exc.status, exc.code, exc.message, call)
        with self.lock:
            device = self.devices.by_object_id(object_id)
            if device is None:
                entity = None
            elif call.method == "GET":
                entity = device.directory_object()
            elif call.epoch != self.epoch:
                return Outcome(204, None, applied=False)
            else:
                device.extension_attributes.update(attributes)
                entity = {}
        if entity is None:
            message = (
                f"Resource '{object_id}' does not exist or one of its queried reference-property "
                "objects are not present."
            )
            return graph_error(404, "Request_ResourceNotFound", message, call)
        if call.method == "PATCH":
            return Outcome(204, None, applied=True)
        try:
            body = select(entity, call.query.get("$select"), "device")
        except RequestRefused as exc:
            return graph_error(exc.status, exc.code, exc.message, call)
        context = f"https://graph.microsoft.com/{call.version}/$metadata#devices/$entity"
        return Outcome(200, {"@odata.context": context, **body})

    def list_devices(self, call: Call) -> Outcome:
        flt = call.query.get("$filter")
        wanted = None
        if flt is not None:
            found = DEVICE_FILTER_RE.match(flt)
            if not found or not GUID_RE.match(found.group(1)):
                message = f"Unsupported or invalid query filter clause specified: {flt!r}."
                return graph_error(400, "Request_UnsupportedQuery", message, call)
            wanted = found.group(1)
        with self.lock:
            if wanted is None:
                matches = [d for d in self.devices.devices.values() if d.object_id]
            else:
                matches = self.devices.by_azure_ad_device_id(wanted)
            rows = [device.directory_object() for device in matches]
        raw = call.query.get("$select")
        try:
            rows = [select(row, raw, "device") for row in rows]
        except RequestRefused as exc:
            return graph_error(exc.status, exc.code, exc.message, call)
        selected = f"({raw})" if raw else ""
        context = f"https://graph.microsoft.com/{call.version}/$metadata#devices{selected}"
        return Outcome(200, {"@odata.context": context, "value": rows})

    # ---- batch -------------------------------------------------------------------------------

    def batch(self, outer: Call) -> Outcome:
        """Run a JSON batch: items in order, each authorized, faulted and throttled on its own."""
        body = outer.body
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return graph_error(
                400, "BadRequest", "A batch body needs a non-empty 'requests' array.", outer
            )
        if len(requests) > MAX_BATCH:
            return graph_error(
                400,
                "BadRequest",
                f"The batch has {len(requests)} requests; at most {MAX_BATCH} are allowed.",
                outer,
            )
        seen: set[str] = set()
        for item in requests:
            problem = _batch_item_problem(item, seen)
            if problem:
                return graph_error(400, "BadRequest", problem, outer)
            seen.add(str(item["id"]))
        statuses: dict[str, int] = {}
        responses: list[dict[str, Any]] = []
        for item in requests:
            item_id = str(item["id"])
            headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
            split = urlsplit(str(item["url"]))
            call = Call(
                method=str(item["method"]).upper(),
                path="/" + split.path.lstrip("/"),
                query={k: v[-1] for k, v in parse_qs(split.query).items()},
                body=item.get("body"),
                claims=outer.claims,
                client_request_id=headers.get("client-request-id"),
                batch_item_id=item_id,
                epoch=outer.epoch,
                version=outer.version,
            )
            depends = [str(d) for d in item.get("dependsOn") or []]
            if any(not 200 <= statuses.get(d, 0) < 300 for d in depends):
                outcome = graph_error(
                    424, "FailedDependency", f"Dependency of request {item_id} failed.", call
                )
                self.record(call, outcome)
            else:
                outcome = self.process(call)
            if outcome.drop:
                return outcome
            statuses[item_id] = outcome.status
            item_headers = {"Content-Type": "application/json", **outcome.headers}
            responses.append(
                {
                    "id": item_id,
                    "status": outcome.status,
                    "headers": item_headers,
                    "body": outcome.body,
                }
            )
        return Outcome(200, {"responses": responses})


def _batch_item_problem(item: Any, seen: set[str]) -> str | None:
    """Why a batch item makes the whole batch invalid, or None."""
    if not isinstance(item, dict):
        return "Each batch request must be a JSON object."
    for key in ("id", "method", "url"):
        if not isinstance(item.get(key), str) or not item[key]:
            return f"Batch request is missing '{key}'."
    if item["id"] in seen:
        return f"Batch request id '{item['id']}' is not unique."
    depends = item.get("dependsOn") or []
    if not isinstance(depends, list) or any(str(d) not in seen for d in depends):
        return f"Batch request '{item['id']}' depends on a request that does not precede it."
    headers = {str(k).lower() for k in (item.get("headers") or {})}
    if "body" in item and "content-type" not in headers:
        return f"Write request id : {item['id']} does not contain Content-Type header or body."
    return None


def validate_patch_body(body: Any) -> str | None:
    """Why Graph would refuse this deviceComplianceScriptDeviceState PATCH body, or None."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    for key, value in body.items():
        if key == "id":
            return "The property 'id' is read-only and cannot be set in a PATCH request."
        if key == "@odata.type":
            if value != ENTITY_TYPE:
                return f"Invalid @odata.type {value!r}: expected '{ENTITY_TYPE}'."
        elif key == "detectionState":
            if value not in RUN_STATES:
                return (
                    f"Invalid value {json.dumps(value)} for property 'detectionState': "
                    f"the runState enum has {', '.join(RUN_STATES)}."
                )
        elif key in DATETIME_PROPERTIES:
            if not isinstance(value, str) or not DATETIME_RE.match(value):
                return (
                    f"Invalid value {json.dumps(value)} for property '{key}': expected an "
                    "Edm.DateTimeOffset with a zone, e.g. 2026-11-28T10:00:00Z."
                )
        elif key in STRING_PROPERTIES:
            if value is not None and not isinstance(value, str):
                return f"Invalid value for property '{key}': expected a string or null."
        else:
            return (
                f"Invalid property '{key}': it does not exist on type "
                "'microsoft.graph.deviceComplianceScriptDeviceState'. Make sure to only use "
                "property names that are defined by the type."
            )
    return None


class GraphHandler(JsonHandler):
    """HTTP front: authenticates /beta and /v1.0 calls, serves the admin endpoints."""

    @property
    def emulator(self) -> GraphEmulator:
        return self.server.app  # type: ignore[attr-defined,no-any-return]

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        path = self.path_only
        version = path.strip("/").split("/")[0]
        if version in VERSIONS:
            self._graph(version, path[len(version) + 1 :])
        elif path.startswith("/_emulator/"):
            self._admin(path[len("/_emulator/") :])
        else:
            self.read_body()
            self.send_json(404, {"error": {"code": "NotFound", "message": f"No route {path}"}})

    def _graph(self, version: str, path: str) -> None:
        raw = self.read_body()
        call = Call(
            method=self.command,
            path="/" + path.strip("/"),
            query=self.query,
            body=None,
            claims={},
            client_request_id=self.headers.get("client-request-id"),
            epoch=self.emulator.epoch,
            version=version,
        )
        outcome = self._authenticate(call)
        if outcome is None and raw.strip():
            try:
                call.body = json.loads(raw)
            except ValueError:
                message = "The request body is not valid JSON."
                outcome = graph_error(400, "BadRequest", message, call)
        if outcome is not None:
            self.emulator.record(call, outcome)
        elif _segments(call.path) == ["$batch"] and call.method == "POST":
            rule = self.emulator.take_fault("POST", call.full_path, outer_batch=True)
            outcome = self.emulator.fault_outcome(rule, call) if rule else None
            if outcome is None:
                outcome = self.emulator.batch(call)
            self.emulator.record(call, outcome)
        else:
            outcome = self.emulator.process(call)
        if outcome.drop:
            self.drop_connection()
            return
        headers = {
            "request-id": call.request_id,
            "client-request-id": call.client_request_id or "",
            "x-ms-ags-diagnostic": DIAGNOSTIC,
            **outcome.headers,
        }
        if not call.client_request_id:
            del headers["client-request-id"]
        self.send_json(outcome.status, outcome.body, headers)

    def _authenticate(self, call: Call) -> Outcome | None:
        """None when the bearer token is good (claims stored on the call), else the 401."""
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if not auth:
            message = "Access token is empty."
        elif scheme.lower() != "bearer" or not token.strip():
            message = "Access token is malformed: expected 'Authorization: Bearer <token>'."
        else:
            try:
                call.claims = tokens.verify(token.strip(), self.emulator.audience)
                return None
            except tokens.TokenError as exc:
                message = exc.message
        outcome = graph_error(401, "InvalidAuthenticationToken", message, call)
        outcome.headers["WWW-Authenticate"] = (
            'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
            'oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'
        )
        return outcome

    def _admin(self, path: str) -> None:
        emu = self.emulator
        try:
            body = self.read_json()
        except ValueError:
            self.send_json(400, {"error": "body is not JSON"})
            return
        route = (self.command, path.strip("/"))
        try:
            if route == ("GET", "requests"):
                with emu.lock:
                    self.send_json(200, {"requests": list(emu.log)})
            elif route == ("GET", "states"):
                self.send_json(200, {"states": emu.state_rows()})
            elif self.command == "GET" and path.startswith("states/"):
                self._admin_state(path[len("states/") :])
            elif route == ("POST", "reset"):
                emu.reset()
                self.send_json(200, {"reset": True})
            elif route == ("GET", "config"):
                with emu.lock:
                    self.send_json(200, emu.settings())
            elif route == ("POST", "config"):
                if not isinstance(body, dict):
                    raise ValueError("config body must be a JSON object")
                self.send_json(200, emu.configure(body))
            elif route == ("GET", "faults"):
                with emu.lock:
                    self.send_json(200, {"faults": emu.faults})
            elif route == ("POST", "faults"):
                emu.set_faults(body)
                self.send_json(200, {"faults": body})
            elif route == ("GET", "runstates"):
                self.send_json(200, {"runStates": emu.run_state_pairs()})
            elif route == ("GET", "devices"):
                self.send_json(200, {"devices": emu.device_rows()})
            elif route == ("POST", "devices"):
                self.send_json(200, {"devices": emu.register_devices(body)})
            elif self.command == "GET" and path.startswith("devices/"):
                with emu.lock:
                    device = emu.devices.find(unquote(path[len("devices/") :].strip("/")))
                    row = None if device is None else device.admin_view()
                if row is None:
                    self.send_json(404, {"error": "no such device"})
                else:
                    self.send_json(200, row)
            else:
                self.send_json(404, {"error": f"no admin route {self.command} /_emulator/{path}"})
        except (TypeError, ValueError) as exc:
            self.send_json(400, {"error": str(exc)})

    def _admin_state(self, rest: str) -> None:
        parts = [unquote(p) for p in rest.split("/")]
        if len(parts) != 2:
            self.send_json(404, {"error": "use /_emulator/states/{scriptId}/{runStateId}"})
            return
        script_id, run_state_id = parts[0].lower(), parts[1]
        with self.emulator.lock:
            entity = self.emulator.states.get((script_id, run_state_id))
            row = None if entity is None else dict(entity)
        if row is None:
            self.send_json(404, {"error": "no such state"})
        else:
            self.send_json(200, {"scriptId": script_id, "runStateId": run_state_id, **row})


def build_server(
    port: int = 0,
    *,
    audience: str | None = None,
    scripts: list[str] | None = None,
    write_limit: str | None = None,
    retry_after_format: str | None = None,
    faults: list[dict[str, Any]] | None = None,
    run_state_ids: str | None = None,
    auto_devices: bool | None = None,
    unknown_devices: list[str] | None = None,
) -> DevServer:
    """Build (not start) the emulator; arguments override the GRAPH_EMULATOR_* settings."""
    env = os.environ
    if scripts is None:
        scripts = [s.strip() for s in env.get("GRAPH_EMULATOR_SCRIPTS", "").split(",") if s.strip()]
    bad = [s for s in scripts if not GUID_RE.match(s)]
    if bad:
        raise ValueError(f"GRAPH_EMULATOR_SCRIPTS must list GUIDs, got {bad}")
    style = retry_after_format or env.get("GRAPH_EMULATOR_RETRY_AFTER_FORMAT") or "int"
    if style not in RETRY_AFTER_FORMATS:
        raise ValueError(f"GRAPH_EMULATOR_RETRY_AFTER_FORMAT must be one of {RETRY_AFTER_FORMATS}")
    if faults is None:
        faults = json.loads(env.get("GRAPH_EMULATOR_FAULTS") or "[]")
    ids = run_state_ids or env.get("GRAPH_EMULATOR_RUN_STATE_IDS") or "template"
    if ids not in RUN_STATE_ID_MODES:
        raise ValueError(f"GRAPH_EMULATOR_RUN_STATE_IDS must be one of {RUN_STATE_ID_MODES}")
    if auto_devices is None:
        auto_devices = env.get("GRAPH_EMULATOR_AUTO_DEVICES", "0").strip().lower() in TRUE
    if unknown_devices is None:
        raw_unknown = env.get("GRAPH_EMULATOR_UNKNOWN_DEVICES", "")
        unknown_devices = [u.strip() for u in raw_unknown.split(",") if u.strip()]
    emulator = GraphEmulator(
        audience=audience or env.get("GRAPH_EMULATOR_AUDIENCE") or "https://graph.microsoft.com",
        scripts=scripts,
        write_limit=parse_limit(
            write_limit if write_limit is not None else env.get("GRAPH_EMULATOR_WRITE_LIMIT")
        ),
        retry_after_format=style,
        faults=validate_faults(faults),
        run_state_ids=ids,
        auto_devices=auto_devices,
        unknown_devices=unknown_devices,
    )
    return make_server(GraphHandler, port, emulator)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m devstack.graph", description=__doc__)
    parser.add_argument("--port", type=int, default=7072, help="0 picks a free port")
    args = parser.parse_args(argv)
    return run_forever(build_server(args.port), "graph")


if __name__ == "__main__":
    raise SystemExit(main())
