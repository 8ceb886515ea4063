"""What one write to a destination came to: the outcome class and the facts an operator needs."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CallResult", "Outcome"]


class Outcome(StrEnum):
    DELIVERED = "delivered"
    TRANSIENT = "transient"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class CallResult:
    """One call to Graph or Logs Ingestion; `reason` is a stable slug for answers and telemetry."""

    outcome: Outcome
    reason: str
    status: int | None = None
    error_code: str | None = None
    request_id: str | None = None
    client_request_id: str | None = None
    retry_after: float | None = None
    elapsed: float = 0.0

    def error(self) -> dict[str, object]:
        """The service's own words, as a poison message and a 502 carry them."""
        return {
            "status": self.status,
            "code": self.error_code,
            "requestId": self.request_id,
            "clientRequestId": self.client_request_id,
        }
