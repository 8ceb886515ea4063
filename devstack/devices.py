"""The Graph emulator's device directory: Intune managedDevices and their Entra device objects.

The `entra` destination finds a device object from an Intune managedDevice id
(``managedDevices/{id}?$select=azureADDeviceId``, then ``/devices?$filter=deviceId eq '...'``)
and PATCHes only its ``extensionAttributes``. This module holds those records and the rules Graph
applies to that PATCH; devstack.graph routes the requests here. The caller holds the emulator's
lock around every method.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# Intune reports this azureADDeviceId for a managedDevice that has no Entra registration.
NO_ENTRA_DEVICE = "00000000-0000-0000-0000-000000000000"
EXTENSION_ATTRIBUTES = tuple(f"extensionAttribute{n}" for n in range(1, 16))
MAX_ATTRIBUTE_LENGTH = 1024
# Properties of microsoft.graph.device that exist but that an app-only caller may not set: Graph
# answers 403 for them, not 400 (only an approved MDM app may).
DEVICE_PROPERTIES = frozenset(
    {
        "accountEnabled",
        "alternativeSecurityIds",
        "approximateLastSignInDateTime",
        "complianceExpirationDateTime",
        "deviceCategory",
        "deviceId",
        "deviceMetadata",
        "deviceOwnership",
        "deviceVersion",
        "displayName",
        "enrollmentProfileName",
        "enrollmentType",
        "isCompliant",
        "isManaged",
        "isRooted",
        "managementType",
        "manufacturer",
        "mdmAppId",
        "model",
        "onPremisesSyncEnabled",
        "operatingSystem",
        "operatingSystemVersion",
        "physicalIds",
        "profileType",
        "systemLabels",
        "trustType",
    }
)
READ_ONLY_PROPERTIES = frozenset({"id", "deletedDateTime", "registrationDateTime"})
DEVICE_TYPE = "#microsoft.graph.device"
INSUFFICIENT = "Insufficient privileges to complete the operation."
_NAMESPACE = uuid.UUID("3b8f2c1e-7d4a-4e59-9a61-5c0d2e8f7b13")


class RequestRefused(Exception):
    """A request Graph refuses (a device PATCH, a ``$select``): status and code as Graph's."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Device:
    """One Intune managedDevice and, when it is Entra-registered, its device object."""

    managed_device_id: str
    azure_ad_device_id: str
    object_id: str | None
    operating_system: str = "Windows"
    display_name: str = ""
    extension_attributes: dict[str, str | None] = field(
        default_factory=lambda: dict.fromkeys(EXTENSION_ATTRIBUTES)
    )

    def admin_view(self) -> dict[str, Any]:
        return {
            "managedDeviceId": self.managed_device_id,
            "azureADDeviceId": self.azure_ad_device_id,
            "objectId": self.object_id,
            "operatingSystem": self.operating_system,
            "displayName": self.display_name,
            "extensionAttributes": dict(self.extension_attributes),
        }

    def managed_device(self) -> dict[str, Any]:
        """The managedDevice properties the emulator knows (a real one has many more)."""
        return {
            "id": self.managed_device_id,
            "deviceName": self.display_name,
            "operatingSystem": self.operating_system,
            "azureADDeviceId": self.azure_ad_device_id,
            "azureActiveDirectoryDeviceId": self.azure_ad_device_id,
        }

    def directory_object(self) -> dict[str, Any]:
        """The Entra device object's properties the emulator knows."""
        return {
            "id": self.object_id,
            "deviceId": self.azure_ad_device_id,
            "displayName": self.display_name,
            "operatingSystem": self.operating_system,
            "accountEnabled": True,
            "extensionAttributes": dict(self.extension_attributes),
        }


def _derived(kind: str, managed_device_id: str) -> str:
    # Stable, so a device auto-registered by `make run` keeps its ids after a reset.
    return str(uuid.uuid5(_NAMESPACE, f"{kind}:{managed_device_id}"))


def _guid(value: Any, name: str) -> str:
    if not isinstance(value, str) or not GUID_RE.match(value):
        raise ValueError(f"{name} must be a GUID, got {value!r}")
    return value.lower()


class DeviceRegistry:
    """managedDevices by id, device objects by object id, and who counts as unknown."""

    def __init__(self, auto_register: bool, unknown: list[str]) -> None:
        self.auto_register = auto_register
        self.unknown = {_guid(u, "unknownDevices entry") for u in unknown}
        self.devices: dict[str, Device] = {}

    def clear(self) -> None:
        self.devices.clear()

    def register(self, spec: Any) -> Device:
        """Add (or replace) a device from an admin body; ids left out are derived."""
        if not isinstance(spec, dict):
            raise ValueError("a device must be a JSON object")
        known = {"managedDeviceId", "azureADDeviceId", "objectId", "operatingSystem", "displayName"}
        extra = set(spec) - known
        if extra:
            raise ValueError(f"unknown device keys: {sorted(extra)}")
        managed = _guid(spec.get("managedDeviceId"), "managedDeviceId")
        aad = spec.get("azureADDeviceId")
        aad = _derived("aad", managed) if aad is None else _guid(aad, "azureADDeviceId")
        # An explicit null objectId means "no Entra device object", as for a stale registration.
        if "objectId" in spec and spec["objectId"] is None:
            object_id = None
        elif "objectId" in spec:
            object_id = _guid(spec["objectId"], "objectId")
        else:
            object_id = None if aad == NO_ENTRA_DEVICE else _derived("object", managed)
        device = Device(
            managed,
            aad,
            object_id,
            operating_system=str(spec.get("operatingSystem") or "Windows"),
            display_name=str(spec.get("displayName") or f"DEVSTACK-{managed[:8].upper()}"),
        )
        self.devices[managed] = device
        self.unknown.discard(managed)
        return device

    def managed(self, managed_device_id: str) -> Device | None:
        """The managedDevice, registering it on first sight when auto-registration is on."""
        key = managed_device_id.lower()
        if key in self.unknown:
            return None
        device = self.devices.get(key)
        if device is None and self.auto_register:
            device = self.register({"managedDeviceId": key})
        return device

    def by_object_id(self, object_id: str) -> Device | None:
        key = object_id.lower()
        return next((d for d in self.devices.values() if d.object_id == key), None)

    def by_azure_ad_device_id(self, device_id: str) -> list[Device]:
        key = device_id.lower()
        return [d for d in self.devices.values() if d.azure_ad_device_id == key and d.object_id]

    def find(self, any_id: str) -> Device | None:
        """A device by its managedDevice id or its object id (for the admin read-back)."""
        key = any_id.lower()
        return self.devices.get(key) or self.by_object_id(key)


def select(entity: dict[str, Any], raw: str | None, type_name: str) -> dict[str, Any]:
    """Apply ``$select`` as Graph does: only the named properties; an unknown one is a 400."""
    if raw is None:
        return dict(entity)
    names = [name.strip() for name in raw.split(",") if name.strip()]
    for name in names:
        if name not in entity:
            raise RequestRefused(
                400,
                "BadRequest",
                f"Could not find a property named '{name}' on type 'microsoft.graph.{type_name}'.",
            )
    return {name: entity[name] for name in names}


def validate_device_patch(body: Any) -> dict[str, str | None]:
    """The extension attributes an app-only PATCH of a device sets, or RequestRefused."""
    if not isinstance(body, dict):
        raise RequestRefused(400, "Request_BadRequest", "The request body must be an object.")
    for key, value in body.items():
        if key == "@odata.type" and value == DEVICE_TYPE:
            continue
        if key in READ_ONLY_PROPERTIES:
            raise RequestRefused(
                400, "Request_BadRequest", f"Property '{key}' is read-only and cannot be set."
            )
        if key in DEVICE_PROPERTIES:
            # App-only callers that are not an approved MDM app may set only extensionAttributes.
            raise RequestRefused(403, "Authorization_RequestDenied", INSUFFICIENT)
        if key != "extensionAttributes":
            raise RequestRefused(
                400,
                "Request_BadRequest",
                f"Property '{key}' does not exist as a declared property or extension property.",
            )
    attributes = body.get("extensionAttributes")
    if "extensionAttributes" not in body or not isinstance(attributes, dict):
        raise RequestRefused(
            400, "Request_BadRequest", "Property 'extensionAttributes' must be an object."
        )
    for name, value in attributes.items():
        if name not in EXTENSION_ATTRIBUTES:
            raise RequestRefused(
                400,
                "Request_BadRequest",
                f"Property '{name}' does not exist on type "
                "'microsoft.graph.onPremisesExtensionAttributes'.",
            )
        if value is not None and not isinstance(value, str):
            raise RequestRefused(
                400,
                "Request_BadRequest",
                f"Invalid value {json.dumps(value)} for property '{name}': "
                "expected a string or null.",
            )
        if isinstance(value, str) and len(value) > MAX_ATTRIBUTE_LENGTH:
            raise RequestRefused(
                400,
                "Request_BadRequest",
                f"Invalid value for property '{name}': at most {MAX_ATTRIBUTE_LENGTH} characters "
                f"are allowed, got {len(value)}.",
            )
    return dict(attributes)
