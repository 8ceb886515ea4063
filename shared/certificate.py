"""The certificate verifier: which Intune device (and tenant) the `X-ARR-ClientCert` proves.

App Service forwards the client certificate it terminated mTLS with, base64 DER, and validates
nothing: every check is here, and a failure is a `CertificateError` naming the check.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from functools import lru_cache

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from shared.ids import canonical_guid, is_guid
from shared.proofs import AuthError, split_bundle
from shared.telemetry import emit

__all__ = [
    "CLIENT_CERT_HEADER",
    "TENANT_OID",
    "CertificateError",
    "CertificateFailure",
    "check_device",
    "verify",
]

CLIENT_CERT_HEADER = "x-arr-clientcert"
# An Intune device certificate is about 1.5 KB of DER (2 KB as base64); 16 KB leaves room for a
# large RSA key while refusing a header meant to make the bridge decode and parse megabytes.
MAX_CERT_HEADER_CHARS = 16 * 1024
# The Intune MDM Device CA stamps the Entra tenant id here: an OCTET STRING holding the GUID's 16
# bytes in Microsoft's mixed-endian order (docs/authentication.md has the evidence).
TENANT_OID = x509.ObjectIdentifier("1.2.840.113556.5.14")


class CertificateFailure(StrEnum):
    MISSING = "certificate-missing"
    TOO_LARGE = "certificate-too-large"
    MALFORMED = "certificate-malformed"
    NOT_YET_VALID = "certificate-not-yet-valid"
    EXPIRED = "certificate-expired"
    NO_CLIENT_AUTH = "certificate-missing-client-auth"
    UNTRUSTED = "certificate-untrusted"
    WRONG_TENANT = "certificate-wrong-tenant"
    NOT_A_DEVICE = "certificate-not-a-device"
    DEVICE_MISMATCH = "device-mismatch"


class CertificateError(AuthError):
    """The client certificate proves nothing here; `failure` says which check refused it."""

    failure: CertificateFailure


@dataclass(frozen=True, slots=True)
class _Parsed:
    cert: x509.Certificate
    not_before: datetime
    not_after: datetime
    usages: tuple[x509.ObjectIdentifier, ...]
    names: list[str]
    tenant: bytes | None


def _parse(header: str) -> _Parsed:
    """Decode and read every field now: cryptography parses lazily, and a DER with a duplicated
    extension or an unknown version fails with its own exception types (not ValueError)."""
    try:
        cert = x509.load_der_x509_certificate(base64.b64decode(header.strip(), validate=True))
        extensions = cert.extensions
        try:
            usages = tuple(extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            usages = ()
        try:
            tenant = extensions.get_extension_for_oid(TENANT_OID).value
        except x509.ExtensionNotFound:
            tenant = None
        names = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return _Parsed(
            cert,
            cert.not_valid_before_utc,
            cert.not_valid_after_utc,
            usages,
            [str(name) for name in names],
            tenant.value if isinstance(tenant, x509.UnrecognizedExtension) else None,
        )
    except (binascii.Error, ValueError, x509.DuplicateExtension, x509.InvalidVersion):
        raise CertificateError(
            CertificateFailure.MALFORMED,
            "The client certificate header is not a base64-encoded DER certificate.",
        ) from None


def _tenant(value: bytes) -> str:
    """The 16 GUID bytes, wrapped in an OCTET STRING (`04 10`) as observed, or bare."""
    raw = value[2:] if len(value) == 18 and value[:2] == b"\x04\x10" else value
    if len(raw) != 16:
        raise CertificateError(
            CertificateFailure.MALFORMED,
            "The client certificate's tenant extension (1.2.840.113556.5.14) is not a GUID.",
        )
    return str(uuid.UUID(bytes_le=raw))


@lru_cache(maxsize=4)
def _trust(ders: tuple[bytes, ...]) -> tuple[Store, list[x509.Certificate]]:
    """Parsed once per process: the store of pinned roots and the pinned intermediates."""
    roots, intermediates = split_bundle(ders)
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


def verify(
    header: str | None, trusted: tuple[bytes, ...], tenant_id: str | None, now: datetime
) -> str:
    """The device id the certificate proves. Checks in order: present, size, encoding, validity,
    EKU, chain to a pinned CA, tenant, device id. `tenant_id` (canonical) pins the tenant; None
    admits every tenant's devices."""
    if not header or not header.strip():
        raise CertificateError(
            CertificateFailure.MISSING,
            "No client certificate was presented; connect with the Intune MDM device certificate.",
        )
    if len(header) > MAX_CERT_HEADER_CHARS:
        raise CertificateError(
            CertificateFailure.TOO_LARGE,
            f"The client certificate header exceeds {MAX_CERT_HEADER_CHARS} characters.",
        )
    parsed = _parse(header)
    if now < parsed.not_before:
        raise CertificateError(
            CertificateFailure.NOT_YET_VALID, "The client certificate is not valid yet."
        )
    if now > parsed.not_after:
        raise CertificateError(
            CertificateFailure.EXPIRED,
            "The client certificate has expired; the device must renew its MDM certificate.",
        )
    if ExtendedKeyUsageOID.CLIENT_AUTH not in parsed.usages:
        raise CertificateError(
            CertificateFailure.NO_CLIENT_AUTH,
            "The client certificate does not allow client authentication (EKU 1.3.6.1.5.5.7.3.2).",
        )
    _verify_chain(parsed.cert, trusted, now)
    _check_tenant(parsed.tenant, tenant_id)
    names = parsed.names
    if len(names) != 1 or not is_guid(names[0]):
        raise CertificateError(
            CertificateFailure.NOT_A_DEVICE,
            "The client certificate's subject CN is not an Intune device id (a GUID).",
        )
    return canonical_guid(names[0])


def _verify_chain(cert: x509.Certificate, trusted: tuple[bytes, ...], now: datetime) -> None:
    store, intermediates = _trust(trusted)
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
        raise CertificateError(
            CertificateFailure.UNTRUSTED,
            "The client certificate does not chain to a pinned Intune CA "
            "(BRIDGE_TRUSTED_CA_CERTS).",
        ) from None


def _check_tenant(value: bytes | None, expected: str | None) -> None:
    """The chain proves only that the Intune MDM Device CA issued the certificate, to some tenant;
    the tenant extension says which. A certificate without one is let through and counted, so the
    administrator sees how many of the fleet the pin actually covers."""
    if expected is None:
        return
    if value is None:
        emit("certificateWithoutTenant", reason="no tenant extension")
        return
    if _tenant(value) != expected:
        raise CertificateError(
            CertificateFailure.WRONG_TENANT,
            "The client certificate was issued to a device of another tenant (BRIDGE_TENANT_ID).",
        )


def check_device(certificate_device: str | None, device_id: str) -> None:
    """A certificate speaks for one device only: device A can never write device B's state."""
    if certificate_device is not None and certificate_device != device_id.lower():
        raise CertificateError(
            CertificateFailure.DEVICE_MISMATCH,
            "The report's deviceId is not the device named by the client certificate.",
        )
