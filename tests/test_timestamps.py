"""The timestamp wire formats: one strict parser, Graph's text, and fixed-width versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared import timestamps


@pytest.mark.parametrize(
    ("text", "utc"),
    [
        ("2026-11-28T10:00:02Z", datetime(2026, 11, 28, 10, 0, 2, tzinfo=UTC)),
        ("2026-11-28t10:00:02z", datetime(2026, 11, 28, 10, 0, 2, tzinfo=UTC)),
        ("2026-11-28 11:00:02+01:00", datetime(2026, 11, 28, 10, 0, 2, tzinfo=UTC)),
        ("2026-11-28T10:00:02.123456789012-00:30", datetime(2026, 11, 28, 10, 30, 2, 123456, UTC)),
    ],
)
def test_rfc3339_with_a_zone_is_read_as_utc(text: str, utc: datetime) -> None:
    parsed = timestamps.parse(text)
    assert parsed == utc
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28T10:00:02",  # naive
        " 2026-11-28T10:00:02Z",
        "2026-11-28T10:00:02Z\n",
        "\uff12\uff10\uff12\uff16-11-28T10:00:02Z",  # full-width digits
        "\u0662\u0660\u0662\u0666-11-28T10:00:02Z",  # Arabic-Indic digits
        "2026-11-28T10:00:02+24:00",
        "2026-02-30T10:00:00Z",
        "0001-01-01T00:30:00+01:00",  # its UTC instant is before year 1
        "9999-12-31T23:59:59-01:00",  # and this one after year 9999
        "2026-11-28T10:00:02.1234567890123Z",
    ],
)
def test_anything_else_is_a_value_error_never_another_exception(text: str) -> None:
    with pytest.raises(ValueError):
        timestamps.parse(text)


def test_versions_are_fixed_width_for_every_year() -> None:
    early = datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC)
    late = datetime(2026, 1, 1, tzinfo=UTC)
    assert timestamps.version(early) == "0999-12-31T23:59:59.000000Z"
    assert timestamps.version(early) < timestamps.version(late)
    assert len(timestamps.version(early)) == len(timestamps.version(late))
    assert timestamps.from_version(timestamps.version(late)) == late


def test_graph_text_is_utc_with_z_and_a_four_digit_year() -> None:
    moment = datetime(2026, 11, 28, 11, 0, 2, 500000, tzinfo=timezone(timedelta(hours=1)))
    assert timestamps.graph_text(moment) == "2026-11-28T10:00:02.5Z"
    assert timestamps.graph_text(datetime(999, 1, 1, tzinfo=UTC)) == "0999-01-01T00:00:00Z"
