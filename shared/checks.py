"""The doctor's verdicts: one shape for every preflight check, and the helpers they share."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from shared.telemetry import clean

__all__ = ["FAIL", "PASS", "WARN", "Check", "error_text", "token_claims"]

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict: `action` says what to do when it is not a PASS."""

    name: str
    verdict: str
    reason: str
    action: str = ""


def token_claims(token: str) -> dict[str, Any] | None:
    """The JWT payload as JSON, unverified (only to read claims); None if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return clean(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
