"""What device proofs share: their settings parsed (auth modes, the pinned CA bundle, the HMAC
secrets) and the one failure type their verifiers raise.

Pure, so `settings` and the verifiers (`certificate`, `webhook`) all import this module and none
of them imports another; the HTTP layer alone decides which status a failure gets.
"""

from __future__ import annotations

import base64
import binascii
import re
import textwrap
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # cryptography is imported only where a CA bundle is parsed (cold start)
    from cryptography import x509

__all__ = [
    "AUTH_MODES",
    "BRIDGE_PROOFS",
    "DEFAULT_AUTH_MODES",
    "AuthError",
    "load_ca_bundle",
    "parse_auth_modes",
    "parse_hmac_secrets",
    "split_bundle",
]

AUTH_MODES = ("function", "certificate", "hmac")
# The proofs the bridge checks itself; `function` keys are the platform's.
BRIDGE_PROOFS = frozenset({"certificate", "hmac"})
DEFAULT_AUTH_MODES = frozenset({"function"})
# App Service passes a Key Vault reference through literally when it cannot resolve it.
_KEY_VAULT_REFERENCE = re.compile(r"\s*@Microsoft\.KeyVault\(", re.IGNORECASE)
_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.DOTALL)
_APP_ROOT = Path(__file__).resolve().parent.parent


class AuthError(Exception):
    """A refused credential: `failure` names the check (its value is the problem slug), `detail`
    says what to fix. Never carries the credential itself."""

    def __init__(self, failure: StrEnum, detail: str) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail

    @property
    def slug(self) -> str:
        return self.failure.value


def _items(value: str) -> list[str]:
    return [item for item in re.split(r"[,;\s]+", value) if item]


def parse_auth_modes(value: Any) -> frozenset[str]:
    """`BRIDGE_AUTH_MODE`: one or more of AUTH_MODES, comma-separated, any case."""
    items = _items(value) if isinstance(value, str) else list(value)
    modes = frozenset(str(mode).lower() for mode in items)
    if not modes or not modes <= set(AUTH_MODES):
        raise ValueError(f"must list one or more of {', '.join(AUTH_MODES)}")
    return modes


def load_ca_bundle(value: str) -> tuple[bytes, ...]:
    """`BRIDGE_TRUSTED_CA_CERTS`: PEM text, or a path to a PEM file (relative to the app root).

    App settings often lose PEM line breaks, so each block is re-wrapped before the library reads
    the bundle; any whitespace (or literal `\\n`) inside a block is ignored.
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
    blocks = [re.sub(r"\s|\\n", "", block) for block in _PEM_BLOCK.findall(text)]
    if not blocks:
        raise ValueError("holds no PEM certificate")
    pem = "".join(
        "-----BEGIN CERTIFICATE-----\n"
        + "\n".join(textwrap.wrap(block, 64))
        + "\n-----END CERTIFICATE-----\n"
        for block in blocks
    )
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ValueError("holds a certificate that is not valid") from None
    ders = tuple(cert.public_bytes(Encoding.DER) for cert in certs)
    roots, _ = split_bundle(ders)
    if not roots:
        raise ValueError(
            "holds no self-signed root; pin the Intune root CA as well as its intermediates"
        )
    return ders


def split_bundle(
    ders: tuple[bytes, ...],
) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Self-signed certificates are the trust anchors; the rest are pinned intermediates."""
    from cryptography import x509

    certs = [x509.load_der_x509_certificate(der) for der in ders]
    roots = [c for c in certs if c.subject == c.issuer and _self_signed(c)]
    return roots, [c for c in certs if c not in roots]


def _self_signed(cert: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def parse_hmac_secrets(value: Any) -> list[str]:
    """`BRIDGE_HMAC_SECRETS`: Standard Webhooks secrets (`whsec_` + base64 of 24-64 random
    bytes, the spec's range), several for rotation."""
    if isinstance(value, str) and _KEY_VAULT_REFERENCE.match(value):
        raise ValueError(
            "is an unresolved Key Vault reference: App Service passed @Microsoft.KeyVault(...) "
            "through because the secret does not exist or the app's identity may not read it"
        )
    items = _items(value) if isinstance(value, str) else [str(v) for v in value]
    for secret in items:
        if not secret.startswith("whsec_"):
            raise ValueError("each secret must start with whsec_")
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a secret after whsec_ is not valid base64") from None
        if not 24 <= len(key) <= 64:
            raise ValueError("each secret must hold 24 to 64 random bytes")
    return items
