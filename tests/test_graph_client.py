"""The Graph client's pure parts: Retry-After forms, outcome classes, URL safety, error parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import requests

from shared.graph import Outcome, _graph_error, classify, parse_retry_after, run_state_url

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
SCRIPT = "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        ("2.128", 2.128),
        (" 0 ", 0.0),
        ("Sat, 28 Nov 2026 12:00:05 GMT", 5.0),
        ("Sat, 28 Nov 2026 11:59:00 GMT", 0.0),
        ("-4", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_integer_fraction_and_http_date(
    header: str | None, seconds: float | None
) -> None:
    assert parse_retry_after(header, NOW) == seconds


@pytest.mark.parametrize(
    ("status", "code", "outcome", "reason"),
    [
        (200, None, Outcome.DELIVERED, "delivered"),
        (204, None, Outcome.DELIVERED, "delivered"),
        (429, "TooManyRequests", Outcome.TRANSIENT, "throttled"),
        (500, None, Outcome.TRANSIENT, "server_error"),
        (502, None, Outcome.TRANSIENT, "server_error"),
        (503, None, Outcome.TRANSIENT, "server_error"),
        (504, None, Outcome.TRANSIENT, "server_error"),
        (401, "InvalidAuthenticationToken", Outcome.TRANSIENT, "unauthorized"),
        (400, "No method match route template", Outcome.PERMANENT, "endpoint_unsupported"),
        (400, "NO METHOD MATCH ROUTE TEMPLATE", Outcome.PERMANENT, "endpoint_unsupported"),
        (400, "BadRequest", Outcome.PERMANENT, "bad_request"),
        (403, "Forbidden", Outcome.PERMANENT, "forbidden"),
        (404, "ResourceNotFound", Outcome.PERMANENT, "not_found"),
        (422, None, Outcome.PERMANENT, "unprocessable"),
        (410, None, Outcome.PERMANENT, "rejected"),
    ],
)
def test_outcome_classes(status: int, code: str | None, outcome: Outcome, reason: str) -> None:
    assert classify(status, code) == (outcome, reason)


@pytest.mark.parametrize(
    "run_state_id", ["../x", "a/b", "a%2Fb", "a?b", "a#b", "", "a b", "x" * 257, "a:b\n"]
)
def test_run_state_ids_that_could_retarget_the_url_are_refused(run_state_id: str) -> None:
    with pytest.raises(ValueError):
        run_state_url("https://graph.microsoft.com/beta", SCRIPT, run_state_id)


@pytest.mark.parametrize("script_id", [f"{SCRIPT}/..", "..", f"{{{SCRIPT}}}", "x", f"{SCRIPT}\n"])
def test_script_ids_must_be_guids_before_a_url_is_built(script_id: str) -> None:
    with pytest.raises(ValueError):
        run_state_url("https://graph.microsoft.com/beta", script_id, "a:b")


def _response(status: int, body: bytes) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = body
    return response


@pytest.mark.parametrize(
    "body",
    [
        b'{"error":{"code":"Forbidden","innerError":{"request-id":"r-1"}}}',
        b'{"error":{"code":"Forbidden","innererror":{"request-id":"r-1"}}}',
        b'{"Error":{"Code":"Forbidden","InnerError":{"Request-Id":"r-1"}}}',
    ],
)
def test_graph_error_body_is_read_case_insensitively(body: bytes) -> None:
    assert _graph_error(_response(403, body)) == ("Forbidden", "r-1")


@pytest.mark.parametrize("body", [b"", b"<html>bad gateway</html>", b"[]", b'{"error":"x"}'])
def test_unexpected_error_bodies_do_not_break_parsing(body: bytes) -> None:
    assert _graph_error(_response(502, body)) == (None, None)
