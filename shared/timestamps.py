"""The timestamp wire formats: the one strict parser for what agents send, Graph's text, and the
fixed-width version text the run-state table compares as strings."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

__all__ = ["EARLIEST", "from_version", "graph_text", "parse", "version"]

# DESIGN mapping rule 5: nothing the bridge accepts happened before 2000, so every emitted year has
# four digits and no report can sort above every genuine one (a year-999 version used to do that).
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)

# RFC 3339 with a mandatory zone, ASCII digits only (`\d` would admit full-width and Arabic-Indic
# digits) and nothing around it; fractions up to 12 digits, as Graph's DateTimeOffset allows.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,12}))?"
    r"(?P<zone>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)
_VERSION = "%Y-%m-%dT%H:%M:%S.%fZ"


def parse(value: object) -> datetime:
    """Strict RFC 3339 with a zone, returned in UTC; raises ValueError saying what is wrong."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 timestamp string such as 2026-11-28T10:00:00Z")
    m = _RFC3339.fullmatch(value)
    if not m:
        raise ValueError("must be an RFC 3339 timestamp such as 2026-11-28T10:00:00Z")
    zone = m.group("zone")
    if not zone:
        raise ValueError("must carry a zone offset (Z or +hh:mm); naive timestamps are ambiguous")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    offset = timedelta(0)
    if zone not in ("Z", "z"):
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError("has an invalid zone offset")
        offset = (1 if zone[0] == "+" else -1) * timedelta(hours=hours, minutes=minutes)
    try:
        local = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
        # 0001-01-01T00:30+01:00 is a valid local time whose UTC instant does not exist.
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValueError("is not a valid date and time") from None


def graph_text(moment: datetime) -> str:
    """Graph's DateTimeOffset in UTC with `Z`; microseconds only when present."""
    moment = moment.astimezone(UTC)
    text = f"{moment.year:04d}" + moment.strftime("-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def version(moment: datetime) -> str:
    """Fixed-width UTC text (`strftime("%Y")` alone writes year 999 as `999`), so versions,
    `acceptedAt` and `poisonedAt` compare correctly as strings."""
    moment = moment.astimezone(UTC)
    return f"{moment.year:04d}" + moment.strftime(_VERSION.removeprefix("%Y"))


def from_version(text: str) -> datetime:
    """The inverse of `version`; raises ValueError for any other text."""
    return datetime.strptime(text, _VERSION).replace(tzinfo=UTC)
