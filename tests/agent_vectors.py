"""The protocol test vectors (agents/test-vectors.json), for the bridge's and the agents' tests.

One file feeds every implementation: the bridge's verifier, the POSIX agent and the PowerShell
agent's signing function must all agree with it, so none of them can drift alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.stack import ROOT

VECTOR_FILE = ROOT / "agents" / "test-vectors.json"


@dataclass(frozen=True)
class Vector:
    """One signed report: what the agent observed, the exact body it sends and its signature."""

    name: str
    secret: str
    webhook_id: str
    timestamp: int
    input: dict[str, Any]
    body: str
    signature: str

    @property
    def body_bytes(self) -> bytes:
        return self.body.encode("utf-8")

    @property
    def headers(self) -> dict[str, str]:
        """The request headers an agent sends with this body at this timestamp."""
        return {
            "Content-Type": "application/json",
            "webhook-id": self.webhook_id,
            "webhook-timestamp": str(self.timestamp),
            "webhook-signature": self.signature,
        }


def load_vectors() -> list[Vector]:
    document = json.loads(VECTOR_FILE.read_text(encoding="utf-8"))
    return [
        Vector(
            name=v["name"],
            secret=v["secret"],
            webhook_id=v["webhookId"],
            timestamp=v["timestamp"],
            input=v["input"],
            body=v["body"],
            signature=v["signature"],
        )
        for v in document["vectors"]
    ]


VECTORS = load_vectors()
