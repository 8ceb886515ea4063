"""Structured events for Application Insights; client text is neutralised before it is logged."""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["clean", "emit"]

logger = logging.getLogger("bridge")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_LOGGED = 256


def clean(value: object) -> str:
    """No CR/LF or control characters from a client reaches a log line; long values are cut."""
    text = _CONTROL.sub("?", str(value))
    return text if len(text) <= _MAX_LOGGED else text[:_MAX_LOGGED] + "..."


def emit(event: str, level: int = logging.INFO, **dimensions: Any) -> None:
    """One custom event (`customEvents` in Application Insights) with its dimensions."""
    dims = {
        k: clean(v) if isinstance(v, str) else v for k, v in dimensions.items() if v is not None
    }
    summary = " ".join(f"{k}={v}" for k, v in dims.items())
    logger.log(
        level,
        "%s %s",
        event,
        summary,
        extra={"microsoft.custom_event.name": event, **{f"bridge.{k}": v for k, v in dims.items()}},
    )
