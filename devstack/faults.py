"""Fault rules, Retry-After values and sliding-window limits shared by the devstack emulators.

A fault rule is a JSON object an emulator applies to matching requests: answer a status (with an
error code, message and Retry-After), sleep first, or drop the connection; ``count`` and
``probability`` bound how often. Graph and Logs Ingestion read the same shape, so a test drives
both the same way.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections import deque
from typing import Any
from urllib.parse import unquote

RULE_KEYS = frozenset(
    {"status", "code", "message", "retryAfter", "count", "probability", "delay", "drop"}
    | {"match", "methods"}
)
RETRY_AFTER_FORMATS = ("int", "fraction", "date")


def validate_faults(rules: Any) -> list[dict[str, Any]]:
    """Check a fault rule list; returns copies so runtime counters never alias the caller's."""
    if not isinstance(rules, list) or not all(isinstance(rule, dict) for rule in rules):
        raise ValueError("faults must be a JSON list of objects")
    for rule in rules:
        unknown = set(rule) - RULE_KEYS
        if unknown:
            raise ValueError(f"unknown fault rule keys: {sorted(unknown)}")
        if not (rule.get("status") or rule.get("delay") or rule.get("drop")):
            raise ValueError("a fault rule needs status, delay or drop")
    return [dict(rule) for rule in rules]


def take_fault(
    rules: list[dict[str, Any]],
    method: str,
    path: str,
    *,
    default_methods: tuple[str, ...],
    require_match: bool = False,
) -> dict[str, Any] | None:
    """The first rule matching ``method`` and ``path`` with applications left, decremented.

    The caller holds its emulator's lock: ``count`` is decremented in place.
    """
    for rule in rules:
        match = rule.get("match")
        if require_match and not match:
            continue
        if match and match not in path and match not in unquote(path):
            continue
        if method not in [m.upper() for m in rule.get("methods") or default_methods]:
            continue
        count = rule.get("count")
        if count is not None and count <= 0:
            continue
        if random.random() >= float(rule.get("probability", 1)):
            continue
        if count is not None:
            rule["count"] = count - 1
        return dict(rule)
    return None


def format_retry_after(seconds: float, style: str) -> str:
    """Render a Retry-After value as a service may: integer, fractional seconds, or an HTTP-date."""
    if style == "fraction":
        return f"{max(seconds, 0.001):.3f}"
    if style == "date":
        return email.utils.formatdate(math.ceil(time.time() + seconds), usegmt=True)
    return str(max(1, math.ceil(seconds)))


def parse_limit(value: str | None) -> tuple[int, float] | None:
    """``"200/20"`` -> (200, 20.0); unset, empty or ``0`` -> no limit."""
    if not value or value.strip() == "0":
        return None
    count, _, seconds = value.partition("/")
    limit, window = int(count), float(seconds or 1)
    if limit <= 0:
        return None
    if window <= 0:
        raise ValueError(f"limit window must be positive: {value!r}")
    return limit, window


def admit(times: deque[float], limit: tuple[int, float], now: float) -> float:
    """Count one request in a sliding window: 0 when admitted, else the seconds until a slot frees.

    The caller holds its emulator's lock and keeps one ``times`` deque per throttled key.
    """
    count, window = limit
    while times and times[0] <= now - window:
        times.popleft()
    if len(times) < count:
        times.append(now)
        return 0.0
    return max(times[0] + window - now, 1e-3)
