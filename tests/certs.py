"""A test PKI shaped like Intune's: a root, the `Microsoft Intune MDM Device CA` intermediate, and
device leaves whose subject CN is the device id and which may carry an Entra tenant id the way the
Intune MDM Device CA stamps it. EC P-256 keys keep generation to milliseconds.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

INTUNE_CA = "Microsoft Intune MDM Device CA"
# Two tenants, so a test can show that a chain-valid certificate of the other one is refused.
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OTHER_TENANT = "0c2b9a4e-1f3d-4e5a-8b6c-7d9e0f1a2b3c"
TENANT_OID = x509.ObjectIdentifier("1.2.840.113556.5.14")
Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def _ca(
    subject: str, key: Key, issuer: str, signer: Key, path_length: int | None
) -> x509.Certificate:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30))
        .not_valid_after(now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
        .sign(signer, hashes.SHA256())
    )


@dataclass(frozen=True)
class Pki:
    """One root and one Intune-named intermediate; `leaf` issues device certificates under it."""

    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: Key

    @classmethod
    def create(cls, root_name: str = "Test Intune Root CA") -> Pki:
        root_key, intermediate_key = _new_key(), _new_key()
        root = _ca(root_name, root_key, root_name, root_key, None)
        intermediate = _ca(INTUNE_CA, intermediate_key, root_name, root_key, 0)
        return cls(root, intermediate, intermediate_key)

    @property
    def bundle_pem(self) -> str:
        """What an administrator pins: the root and the intermediate, as PEM text."""
        return "".join(
            c.public_bytes(Encoding.PEM).decode() for c in (self.root, self.intermediate)
        )

    def leaf(self, device_id: str | None = None, **options: Any) -> x509.Certificate:
        """A device certificate like Intune's: CN = device id, client-auth EKU, no SAN."""
        return self.leaf_with_key(device_id, **options)[0]

    def leaf_with_key(
        self,
        device_id: str | None = None,
        *,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        usages: tuple[x509.ObjectIdentifier, ...] | None = (ExtendedKeyUsageOID.CLIENT_AUTH,),
        self_signed: bool = False,
        common_name: str | None = None,
        tenant_id: str | None = None,
        tenant_value: bytes | None = None,
    ) -> tuple[x509.Certificate, Key]:
        """A device certificate (CN = device id, client-auth EKU, no SAN) and its private key."""
        now = datetime.now(UTC)
        key = _new_key()
        signer = key if self_signed else self.intermediate_key
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name or device_id or str(uuid.uuid4())))
            .issuer_name(_name(INTUNE_CA))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - timedelta(days=1))
            .not_valid_after(not_after or now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                critical=False,
            )
        )
        if usages is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        if tenant_id is not None:
            tenant_value = tenant_extension(tenant_id)
        if tenant_value is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(TENANT_OID, tenant_value), critical=False
            )
        return builder.sign(signer, hashes.SHA256()), key


def tenant_extension(tenant_id: str) -> bytes:
    """The extension value as Intune writes it: an OCTET STRING of the GUID's 16 bytes in
    Microsoft's mixed-endian order (`uuid.UUID.bytes_le`)."""
    return b"\x04\x10" + uuid.UUID(tenant_id).bytes_le


def header(cert: x509.Certificate) -> str:
    """`X-ARR-ClientCert` as App Service sends it: base64 of the DER, no line breaks."""
    return base64.b64encode(cert.public_bytes(Encoding.DER)).decode()


@lru_cache(maxsize=1)
def trusted() -> Pki:
    """The PKI the bridge pins in tests; created once per test session."""
    return Pki.create()


@lru_cache(maxsize=1)
def untrusted() -> Pki:
    """Another hierarchy with the same intermediate name, never pinned: a convincing forgery."""
    return Pki.create("Rogue Root CA")
