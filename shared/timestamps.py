"""The one wire format for the bridge's own timestamps: fixed-width UTC text that sorts as time."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["format_version", "parse_version"]

_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_version(moment: datetime) -> str:
    """Always a four-digit year (`strftime("%Y")` writes 999 as `999`): text compares as time."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S.%f}Z"


def parse_version(text: str) -> datetime:
    """The inverse of `format_version`; raises ValueError on anything else."""
    return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)
