"""Identifier checks: every id is proven safe here before any Graph URL is built from it."""

from __future__ import annotations

import re
import uuid

__all__ = ["REPORT_ID", "canonical_guid", "is_guid", "new_report_id"]

# fullmatch, not `$`: `$` also matches before a trailing newline.
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
REPORT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def is_guid(value: object) -> bool:
    return isinstance(value, str) and bool(_GUID.fullmatch(value))


def canonical_guid(value: str) -> str:
    """Only the 8-4-4-4-12 form: braces, URNs, `%2F` or `../` never reach a URL."""
    if not is_guid(value):
        raise ValueError("must be a GUID such as 0f8fad5b-d9cb-469f-a165-70867728950e")
    return value.lower()


def new_report_id() -> str:
    return uuid.uuid4().hex
