"""problem+json answers (RFC 9457): the response type the HTTP layer returns and the one builder
of error bodies, whose `type` names a slug documented in docs/agent-api.md."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PROBLEM_BASE", "PROBLEM_JSON", "ApiResponse", "problem"]

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "urn:intune-compliance-bridge:problem:"


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def body_bytes(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode()


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> ApiResponse:
    """RFC 9457 problem details; `type` names the slug documented in docs/agent-api.md."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    body.update({k: v for k, v in extra.items() if v is not None})
    return ApiResponse(status, body, headers or {}, PROBLEM_JSON)
