"""The protocol test vectors (agents/test-vectors.json, agents/answer-vectors.json), for the
bridge's and the agents' tests.

One file feeds every implementation: the bridge's verifier, the POSIX agent and the PowerShell
agent's signing function must all agree with it, so none of them can drift alone; the answer
vectors hold both agents to the same decision for each answer and the same ingest URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.stack import ROOT

VECTOR_FILE = ROOT / "agents" / "test-vectors.json"
ANSWER_FILE = ROOT / "agents" / "answer-vectors.json"


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


@dataclass(frozen=True)
class Answer:
    """One answer a bridge (or what stands in front of it) can give, and what an agent does."""

    status: int  # 0: no answer at all
    type: str | None
    action: str  # done | refused | keep
    why: str

    @property
    def name(self) -> str:
        slug = (self.type or "").rsplit(":", 1)[-1].rsplit("/", 1)[-1]
        return f"{self.status}-{slug or 'none'}"


@dataclass(frozen=True)
class UrlCase:
    """A configured bridge address and the ingest URL built from it; {origin} is substituted."""

    bridge_url: str
    ingest_url: str

    def at(self, origin: str) -> tuple[str, str]:
        return self.bridge_url.replace("{origin}", origin), self.ingest_url.replace(
            "{origin}", origin
        )


_ANSWERS = json.loads(ANSWER_FILE.read_text(encoding="utf-8"))
ANSWERS = [Answer(a["status"], a["type"], a["action"], a["why"]) for a in _ANSWERS["answers"]]
URLS = [UrlCase(u["bridgeUrl"], u["ingestUrl"]) for u in _ANSWERS["urls"]]
REJECTED_URLS: list[str] = _ANSWERS["rejectedUrls"]
