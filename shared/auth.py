"""Who is speaking: prove which device sent a report before the bridge believes any of it.

`authenticate` runs every mode that `BRIDGE_AUTH_MODE` lists and either returns what they proved
(a `DeviceIdentity`) or raises one `AuthError` naming the first check that failed. The HTTP layer
turns that error into problem+json; nothing here ever repeats a header, signature, secret or
certificate, in an error or in a log line.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.ids import REPORT_ID, canonical_guid, is_guid
from shared.telemetry import emit

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "AUTH_MODES",
    "AuthError",
    "DeviceIdentity",
    "authenticate",
    "check_device",
    "load_ca_bundle",
    "parse_hmac_secret",
]

AUTH_MODES = ("function", "certificate", "hmac")
CLIENT_CERT_HEADER = "x-arr-clientcert"
# An Intune device certificate is about 1.5 KB of DER (2 KB as base64); 16 KB leaves room for a
# large RSA key while refusing a header meant to make the bridge decode and parse megabytes.
MAX_CERT_HEADER_CHARS = 16 * 1024
MAX_SIGNATURE_HEADER_CHARS = 1024
# Standard Webhooks: a signed request is fresh for five minutes either side of the bridge's clock.
SIGNATURE_TOLERANCE = timedelta(minutes=5)

_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
# Canonical integers only: the library signs the parsed value, so `0170...` or `170...\n` would
# verify like `170...` and slip past the replay memory, which is keyed by the header's text.
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,11}")
_SIGNATURE = re.compile(r"v[0-9]{1,3},[A-Za-z0-9+/]{1,200}={0,2}")
_APP_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """What the credentials proved: a device id only when a certificate named it."""

    device_id: str | None = None
    webhook_id: str | None = None


class AuthError(Exception):
    """A refused credential: 401 when missing or invalid, 403 when valid but not for this."""

    def __init__(self, status: int, slug: str, detail: str) -> None:
        super().__init__(f"{status} {slug}: {detail}")
        self.status = status
        self.slug = slug
        self.detail = detail


def authenticate(
    settings: Settings, headers: Mapping[str, str], body: bytes, *, now: datetime
) -> DeviceIdentity:
    """Run each configured mode; every one must pass (`certificate,hmac` needs both)."""
    headers = {k.lower(): v for k, v in headers.items()}
    device_id = webhook_id = None
    if "certificate" in settings.auth_modes:
        device_id = _verify_certificate(headers.get(CLIENT_CERT_HEADER), settings, now)
    # Signatures go last: a verified one is recorded against replay, so nothing may fail after it.
    if "hmac" in settings.auth_modes:
        secrets = tuple(secret.get_secret_value() for secret in settings.hmac_secrets)
        webhook_id = _verify_signature(headers, body, secrets, now)
    return DeviceIdentity(device_id=device_id, webhook_id=webhook_id)


def check_device(identity: DeviceIdentity, device_id: str) -> None:
    """A certificate speaks for one device only: device A can never write device B's state."""
    if identity.device_id is not None and identity.device_id != device_id.lower():
        raise AuthError(
            403,
            "device-mismatch",
            "The report's deviceId is not the device named by the client certificate.",
        )


# --- certificate mode ---------------------------------------------------------------------------


def load_ca_bundle(value: str) -> tuple[bytes, ...]:
    """`BRIDGE_TRUSTED_CA_CERTS`: PEM text, or a path to a PEM file (relative to the app root).

    App settings often lose PEM line breaks, so only the BEGIN/END markers are relied on and any
    whitespace (or literal `\\n`) inside a block is ignored.
    """
    text = value.strip()
    if "-----BEGIN" not in text:
        path = Path(text)
        path = path if path.is_absolute() else _APP_ROOT / path
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError, ValueError):
            raise ValueError(
                "is neither PEM text nor a readable PEM file (give the PEM or a path to it)"
            ) from None
    ders = []
    for block in _PEM_BLOCK.findall(text):
        try:
            der = base64.b64decode(re.sub(r"\s|\\n", "", block), validate=True)
            ders.append(x509.load_der_x509_certificate(der).public_bytes(Encoding.DER))
        except (binascii.Error, ValueError):
            raise ValueError(f"certificate {len(ders) + 1} in the bundle is not valid") from None
    if not ders:
        raise ValueError("holds no PEM certificate")
    roots, _ = _split_bundle(tuple(ders))
    if not roots:
        raise ValueError(
            "holds no self-signed root; pin the Intune root CA as well as its intermediates"
        )
    return tuple(ders)


def _split_bundle(
    ders: tuple[bytes, ...],
) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Self-signed certificates are the trust anchors; the rest are pinned intermediates."""
    certs = [x509.load_der_x509_certificate(der) for der in ders]
    roots = [c for c in certs if c.subject == c.issuer and _self_signed(c)]
    return roots, [c for c in certs if c not in roots]


def _self_signed(cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@lru_cache(maxsize=4)
def _trust(ders: tuple[bytes, ...]) -> tuple[Store, list[x509.Certificate]]:
    """Parsed once per process: the store of pinned roots and the pinned intermediates."""
    roots, intermediates = _split_bundle(ders)
    return Store(roots), intermediates


def _client_auth(policy: Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage) -> None:
    if policy.extended_key_usage not in eku:
        raise ValueError("no client authentication EKU")


# Intune names the device in the subject CN only, so subjectAltName may be absent (the default
# end-entity policy demands one). The EKU must be present and allow client authentication: the
# default policy would accept a certificate with no EKU at all.
_EE_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _client_auth)
)
_CA_POLICY = ExtensionPolicy.webpki_defaults_ca()


def _verify_certificate(header: str | None, settings: Settings, now: datetime) -> str:
    """Checks in order: present, size, encoding, validity, EKU, chain to a pinned CA, device id."""
    if not header or not header.strip():
        raise AuthError(
            401,
            "certificate-missing",
            "No client certificate was presented; connect with the Intune MDM device certificate.",
        )
    if len(header) > MAX_CERT_HEADER_CHARS:
        raise AuthError(
            401,
            "certificate-too-large",
            f"The client certificate header exceeds {MAX_CERT_HEADER_CHARS} characters.",
        )
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(header.strip(), validate=True))
        # Parsed lazily by cryptography: read everything now so a bad encoding fails here.
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        usages = _extended_key_usages(cert)
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except (binascii.Error, ValueError):
        raise AuthError(
            401,
            "certificate-malformed",
            "The client certificate header is not a base64-encoded DER certificate.",
        ) from None
    if now < not_before:
        raise AuthError(
            401, "certificate-not-yet-valid", "The client certificate is not valid yet."
        )
    if now > not_after:
        raise AuthError(
            401,
            "certificate-expired",
            "The client certificate has expired; the device must renew its MDM certificate.",
        )
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise AuthError(
            401,
            "certificate-missing-client-auth",
            "The client certificate does not allow client authentication (EKU 1.3.6.1.5.5.7.3.2).",
        )
    store, intermediates = _trust(settings.trusted_ca_certs)
    verifier = (
        PolicyBuilder()
        .store(store)
        .time(now)
        .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        verifier.verify(cert, intermediates)
    except (VerificationError, ValueError) as exc:
        # The verifier's reason helps an administrator; its tail names the certificate, so cut it.
        emit("certificateUntrusted", reason=str(exc).split(" (encountered")[0])
        raise AuthError(
            401,
            "certificate-untrusted",
            "The client certificate does not chain to a pinned Intune CA "
            "(BRIDGE_TRUSTED_CA_CERTS).",
        ) from None
    if len(names) != 1 or not is_guid(names[0]):
        raise AuthError(
            403,
            "certificate-not-a-device",
            "The client certificate's subject CN is not an Intune device id (a GUID).",
        )
    return canonical_guid(str(names[0]))


def _extended_key_usages(cert: x509.Certificate) -> tuple[x509.ObjectIdentifier, ...]:
    try:
        return tuple(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return ()


# --- hmac mode (Standard Webhooks) --------------------------------------------------------------


def parse_hmac_secret(value: str) -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 24-64 random bytes (the spec's range)."""
    if not value.startswith("whsec_"):
        raise ValueError("each secret must start with whsec_")
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a secret after whsec_ is not valid base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError("each secret must hold 24 to 64 random bytes")
    return value


class _ReplayGuard:
    """Signed requests already accepted while still fresh; one process's memory (see docs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: set[tuple[str, str]] = set()
        self._expiry: list[tuple[float, tuple[str, str]]] = []

    def first_use(self, key: tuple[str, str], expires: float, now: float) -> bool:
        with self._lock:
            while self._expiry and self._expiry[0][0] < now:
                self._seen.discard(heapq.heappop(self._expiry)[1])
            if key in self._seen:
                return False
            self._seen.add(key)
            heapq.heappush(self._expiry, (expires, key))
            return True


_replays = _ReplayGuard()


def _verify_signature(
    headers: Mapping[str, str], body: bytes, secrets: tuple[str, ...], now: datetime
) -> str:
    """Standard Webhooks v1 against every configured secret, so rotation needs no downtime."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signature = headers.get("webhook-signature", "")
    if not (msg_id and timestamp and signature):
        raise AuthError(
            401,
            "signature-missing",
            "Sign the request: send webhook-id, webhook-timestamp and webhook-signature.",
        )
    if not REPORT_ID.fullmatch(msg_id):  # fullmatch: `$` alone would let a trailing newline in
        raise AuthError(
            401, "webhook-id-invalid", "webhook-id must be 1-64 characters of A-Z a-z 0-9 . _ -"
        )
    if not _TIMESTAMP.fullmatch(timestamp):
        raise AuthError(
            401, "timestamp-invalid", "webhook-timestamp must be integer seconds since 1970 (UTC)."
        )
    age = now.timestamp() - int(timestamp)
    limit = int(SIGNATURE_TOLERANCE.total_seconds())
    if age > limit:
        raise AuthError(
            401,
            "timestamp-too-old",
            f"webhook-timestamp is {int(age)} s old; at most {limit} s is accepted. "
            "Check the device clock and sign each attempt anew.",
        )
    if -age > limit:
        raise AuthError(
            401,
            "timestamp-too-new",
            f"webhook-timestamp is {int(-age)} s ahead of the bridge's clock; at most {limit} s "
            "is accepted. Check the device clock.",
        )
    versions = signature.split(" ")
    if len(signature) > MAX_SIGNATURE_HEADER_CHARS or not all(map(_SIGNATURE.fullmatch, versions)):
        raise AuthError(
            401,
            "signature-malformed",
            "webhook-signature must be space-separated `v1,<base64>` entries.",
        )
    signed = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    if not any(_matches(secret, body, signed) for secret in secrets):
        raise AuthError(
            401,
            "signature-invalid",
            "No webhook-signature matches a configured secret for this body and timestamp.",
        )
    if not _replays.first_use((msg_id, timestamp), int(timestamp) + limit, now.timestamp()):
        raise AuthError(
            401,
            "signature-replayed",
            "This signed request was already received; sign each attempt with a new "
            "webhook-timestamp.",
        )
    return msg_id


def _matches(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError):
        return False
    return True
