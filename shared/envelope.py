"""The request before the report: method, media type and size (checked before authentication),
then strict parsing and the schema (only for callers who authenticated). Each refusal is a
`BadRequest` carrying the problem answer the HTTP layer returns as it is."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.message import Message
from typing import Any

from pydantic import ValidationError

from shared.mapping import strict_json
from shared.models import ComplianceReport
from shared.problems import ApiResponse, problem
from shared.settings import Settings

__all__ = ["MAX_LISTED_ERRORS", "MAX_OBJECT_KEYS", "BadRequest", "check", "parse", "validate"]

_MAX_JSON_DEPTH = 32
# The widest object the contract has is 8 keys; anything far wider is an attack on the parser.
MAX_OBJECT_KEYS = 64
# A 422 lists this many fields at most, each name cut to _MAX_FIELD_CHARS: a body of 200,000
# unknown keys must not earn an answer ten times its size.
MAX_LISTED_ERRORS = 20
_MAX_FIELD_CHARS = 64
_ASCII_DIGITS = re.compile(r"[0-9]{1,18}")


class BadRequest(Exception):
    """A request refused before the report is known; `response` is the answer."""

    def __init__(self, response: ApiResponse, invalid_fields: int | None = None) -> None:
        self.response = response
        self.invalid_fields = invalid_fields


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """One entry per invalid field, named by its JSON path; the input itself is never echoed."""
    out = []
    for err in exc.errors(include_url=False, include_input=False)[:MAX_LISTED_ERRORS]:
        path = ".".join(str(part) for part in err["loc"]) or "$"
        if len(path) > _MAX_FIELD_CHARS:
            path = path[:_MAX_FIELD_CHARS] + "..."
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field; the agent API rejects fields it does not define"
        elif err["type"] == "missing":
            message = "required"
        out.append({"field": path, "message": message})
    return out


def _depth(value: Any, limit: int) -> int:
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def check(method: str, headers: Mapping[str, str], body: bytes, max_bytes: int) -> None:
    """Method, media type and size: the checks that need neither credentials nor parsing."""
    if method.upper() != "POST":
        raise BadRequest(
            problem(
                405,
                "method-not-allowed",
                "Method not allowed",
                f"{method.upper()[:16]} is not supported here; send POST.",
                headers={"Allow": "POST"},
            )
        )
    if not _is_json(headers.get("content-type", "")):
        raise BadRequest(
            problem(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                "Send the report as Content-Type: application/json (UTF-8).",
            )
        )
    declared = headers.get("content-length")
    if declared is not None:
        # ASCII digits only: `str.isdigit` admits `²`, which `int()` then refuses.
        if not declared.isascii() or not declared.isdigit():
            raise BadRequest(
                problem(400, "bad-request", "Bad request", "Content-Length is not a number.")
            )
        if not _ASCII_DIGITS.fullmatch(declared) or int(declared) > max_bytes:
            raise BadRequest(_too_large(max_bytes))
    if len(body) > max_bytes:
        raise BadRequest(_too_large(max_bytes))


def _is_json(content_type: str) -> bool:
    """`application/json`, with no charset or UTF-8; other parameters are allowed (RFC 9110)."""
    message = Message()
    message["content-type"] = content_type
    charset = message.get_param("charset")
    utf8 = charset is None or str(charset).lower() in ("utf-8", "utf8")
    return message.get_content_type() == "application/json" and utf8


def parse(body: bytes) -> dict[str, Any]:
    """Strict JSON, shallow and narrow, and an object: run only for authenticated callers, so
    nobody else learns anything from the parser's diagnostics."""
    try:
        data = strict_json(body.decode("utf-8"), MAX_OBJECT_KEYS)
    except UnicodeDecodeError:
        raise BadRequest(_invalid_json("not UTF-8")) from None
    except ValueError as exc:
        raise BadRequest(_invalid_json(str(exc).splitlines()[0][:200])) from None
    if _depth(data, _MAX_JSON_DEPTH) > _MAX_JSON_DEPTH:
        raise BadRequest(_invalid_json("nested too deeply"))
    if not isinstance(data, dict):
        raise BadRequest(
            problem(
                422,
                "invalid-report",
                "Invalid report",
                "The body must be a JSON object.",
                errors=[{"field": "$", "message": "must be a JSON object"}],
            )
        )
    return data


def _invalid_json(reason: str) -> ApiResponse:
    return problem(400, "invalid-json", "Unreadable JSON", f"The body is not valid JSON: {reason}.")


def _too_large(max_bytes: int) -> ApiResponse:
    return problem(
        413,
        "payload-too-large",
        "Payload too large",
        f"The body exceeds {max_bytes} bytes; cap script output on the device.",
    )


def validate(data: dict[str, Any], settings: Settings, received_at: datetime) -> ComplianceReport:
    try:
        return ComplianceReport.model_validate(
            data, context={"now": received_at, "clock_skew": settings.clock_skew}
        )
    except ValidationError as exc:
        errors = _field_errors(exc)
        listed = "." if exc.error_count() <= len(errors) else f"; the first {len(errors)} listed."
        raise BadRequest(
            problem(
                422,
                "invalid-report",
                "Invalid report",
                f"{exc.error_count()} field(s) failed validation{listed}",
                errors=errors,
            ),
            exc.error_count(),
        ) from None
