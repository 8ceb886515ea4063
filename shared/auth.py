"""Who is speaking: run every proof `BRIDGE_AUTH_MODE` lists and say what they proved.

The verifiers live in `certificate` and `webhook`; both raise an `AuthError` subclass naming the
failed check, and the HTTP layer (`api`) alone maps those failures to statuses. Nothing here ever
repeats a header, signature, secret or certificate, in an error or in a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from shared.proofs import AuthError
from shared.settings import Settings

__all__ = ["AuthError", "DeviceIdentity", "authenticate", "check_device"]


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What the credentials proved: a device id only when a certificate named it."""

    device_id: str | None = None
    webhook_id: str | None = None


def authenticate(
    settings: Settings, headers: Mapping[str, str], body: bytes, *, now: datetime
) -> DeviceIdentity:
    """Run each configured mode; every one must pass (`certificate,hmac` needs both)."""
    headers = {k.lower(): v for k, v in headers.items()}
    device_id = webhook_id = None
    # Each verifier (cryptography, standardwebhooks) is imported only by the mode that uses it.
    if "certificate" in settings.auth_modes:
        from shared import certificate

        device_id = certificate.verify(
            headers.get(certificate.CLIENT_CERT_HEADER),
            settings.trusted_ca_certs,
            settings.tenant_id,
            now,
        )
    if "hmac" in settings.auth_modes:
        from shared import webhook

        secrets = tuple(secret.get_secret_value() for secret in settings.hmac_secrets)
        webhook_id = webhook.verify(headers, body, secrets, now)
    return DeviceIdentity(device_id=device_id, webhook_id=webhook_id)


def check_device(identity: DeviceIdentity, device_id: str) -> None:
    """A certificate speaks for one device only: device A can never write device B's state."""
    if identity.device_id is not None:
        from shared import certificate

        certificate.check_device(identity.device_id, device_id)
