"""JWT-shaped HS256 access tokens for the local stack.

The identity emulator issues them and the Graph and Logs Ingestion emulators verify them, so the
bridge's real token handling (caching, refresh, expiry, audience per cloud) is exercised without
Entra ID.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
import uuid
from typing import Any

DEFAULT_KEY = "devstack-local-signing-key-not-a-secret"
TENANT_ID = "00000000-0000-0000-0000-000000000000"
ISSUER = f"https://sts.windows.net/{TENANT_ID}/"
_OID_NAMESPACE = uuid.UUID("6f1d2b3c-9a8e-4c6f-8d2a-0b5e7c4f1a90")


class TokenError(Exception):
    """A token was refused; ``code`` is stable for branching, ``message`` reads like Entra ID's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _key() -> bytes:
    # Read on every call so both emulators (and tests) follow the environment they run in.
    return os.environ.get("DEVSTACK_TOKEN_KEY", DEFAULT_KEY).encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(signing_input: str) -> str:
    return _b64(hmac.new(_key(), signing_input.encode(), hashlib.sha256).digest())


def object_id(client_id: str) -> str:
    """The identity's stable object id, derived from its client id."""
    return str(uuid.uuid5(_OID_NAMESPACE, client_id.lower()))


def issue(
    audience: str,
    client_id: str,
    roles: list[str],
    lifetime_s: int,
    now: float | None = None,
) -> tuple[str, int]:
    """Issue an app-only token; returns the token and its expiry (epoch seconds)."""
    issued = int(time.time() if now is None else now)
    expires = issued + int(lifetime_s)
    claims = {
        "aud": audience,
        "iss": ISSUER,
        "iat": issued,
        "nbf": issued,
        "exp": expires,
        "appid": client_id,
        "azp": client_id,
        "oid": object_id(client_id),
        "sub": object_id(client_id),
        "tid": TENANT_ID,
        "roles": list(roles),
        "idtyp": "app",
    }
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}"
    return f"{signing_input}.{_sign(signing_input)}", expires


def verify(token: str, audience: str, now: float | None = None) -> dict[str, Any]:
    """Return the token's claims, or raise TokenError saying why it is refused."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise TokenError("malformed", "Access token is malformed: expected three segments.")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except ValueError as exc:
        raise TokenError("malformed", "Access token is malformed: undecodable segment.") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("malformed", "Access token is malformed: segments must be JSON objects.")
    if header.get("alg") != "HS256":
        alg = header.get("alg")
        raise TokenError("malformed", f"Access token is malformed: unsupported alg {alg!r}.")
    if not hmac.compare_digest(_sign(f"{parts[0]}.{parts[1]}"), parts[2]):
        raise TokenError("bad_signature", "Access token validation failure: invalid signature.")
    if claims.get("aud") != audience:
        raise TokenError(
            "wrong_audience",
            f"Access token validation failure. Invalid audience: expected {audience!r}, "
            f"got {claims.get('aud')!r}.",
        )
    current = time.time() if now is None else now
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
        raise TokenError("malformed", "Access token is malformed: exp and nbf are required.")
    if current >= exp:
        raise TokenError("expired", "Lifetime validation failed, the token is expired.")
    if current < nbf:
        raise TokenError("not_yet_valid", "Lifetime validation failed, the token is not yet valid.")
    return claims
