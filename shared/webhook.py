"""The webhook verifier: Standard Webhooks v1 signatures over the raw body, against every
configured secret, within five minutes either side of the bridge's clock.

One function, one failure type (`SignatureError` naming the check), constant-time comparison by
the `standardwebhooks` library. Replays are not refused here: `webhook-id` is the sender's
idempotency key, and a resent request carries the same report version, which the run-state table
(shared by every instance) answers as a duplicate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.ids import REPORT_ID
from shared.proofs import AuthError

__all__ = ["TOLERANCE", "SignatureError", "SignatureFailure", "verify"]

MAX_SIGNATURE_HEADER_CHARS = 1024
TOLERANCE = timedelta(minutes=5)

# Canonical integers only: the library signs the parsed value, so `0170...` or `170...\n` would
# verify like `170...`; one spelling per signed request keeps what was signed unambiguous.
_UNIX_SECONDS = re.compile(r"0|[1-9][0-9]{0,11}")
_SIGNATURE = re.compile(r"v[0-9]{1,3},[A-Za-z0-9+/]{1,200}={0,2}")


class SignatureFailure(StrEnum):
    MISSING = "signature-missing"
    ID_INVALID = "webhook-id-invalid"
    TIMESTAMP_INVALID = "timestamp-invalid"
    TOO_OLD = "timestamp-too-old"
    TOO_NEW = "timestamp-too-new"
    MALFORMED = "signature-malformed"
    INVALID = "signature-invalid"


class SignatureError(AuthError):
    """The request's signature proves nothing; `failure` says which check refused it."""

    failure: SignatureFailure


def verify(headers: Mapping[str, str], body: bytes, secrets: tuple[str, ...], now: datetime) -> str:
    """The verified `webhook-id`; `headers` have lower-case names."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    signature = headers.get("webhook-signature", "")
    if not (msg_id and timestamp and signature):
        raise SignatureError(
            SignatureFailure.MISSING,
            "Sign the request: send webhook-id, webhook-timestamp and webhook-signature.",
        )
    if not REPORT_ID.fullmatch(msg_id):  # fullmatch: `$` alone would let a trailing newline in
        raise SignatureError(
            SignatureFailure.ID_INVALID, "webhook-id must be 1-64 characters of A-Z a-z 0-9 . _ -"
        )
    if not _UNIX_SECONDS.fullmatch(timestamp):
        raise SignatureError(
            SignatureFailure.TIMESTAMP_INVALID,
            "webhook-timestamp must be integer seconds since 1970 (UTC).",
        )
    age = now.timestamp() - int(timestamp)
    limit = int(TOLERANCE.total_seconds())
    if age > limit:
        raise SignatureError(
            SignatureFailure.TOO_OLD,
            f"webhook-timestamp is {int(age)} s old; at most {limit} s is accepted. "
            "Check the device clock and sign each attempt anew.",
        )
    if -age > limit:
        raise SignatureError(
            SignatureFailure.TOO_NEW,
            f"webhook-timestamp is {int(-age)} s ahead of the bridge's clock; at most {limit} s "
            "is accepted. Check the device clock.",
        )
    versions = signature.split(" ")
    if len(signature) > MAX_SIGNATURE_HEADER_CHARS or not all(map(_SIGNATURE.fullmatch, versions)):
        raise SignatureError(
            SignatureFailure.MALFORMED,
            "webhook-signature must be space-separated `v1,<base64>` entries.",
        )
    signed = {"webhook-id": msg_id, "webhook-timestamp": timestamp, "webhook-signature": signature}
    if not any(_matches(secret, body, signed) for secret in secrets):
        raise SignatureError(
            SignatureFailure.INVALID,
            "No webhook-signature matches a configured secret for this body and timestamp.",
        )
    return msg_id


def _matches(secret: str, body: bytes, headers: dict[str, str]) -> bool:
    try:
        Webhook(secret).verify(body, headers, json_parse=False)
    except (WebhookVerificationError, ValueError):
        return False
    return True
