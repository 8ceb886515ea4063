"""Preflight checks for the `logs` and `entra` destinations (the doctor's graph checks are in
`shared.doctor`): a token for each audience, the rule and stream, the Entra role and one lookup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from shared.checks import error_text, token_claims
from shared.outcomes import CallResult
from shared.settings import Settings

__all__ = ["destination_checks"]

ENTRA_ROLE = "Device.ReadWrite.All"


def destination_checks(
    settings: Settings, bridge: Any, devices: list[str] | None, check: Any
) -> Iterator[Any]:
    """`check(name, verdict, reason, action="")` builds the doctor's verdict."""
    if "logs" in settings.destinations:
        yield from _logs(settings, bridge, check)
    if "entra" in settings.destinations:
        yield from _entra(settings, bridge, devices or [], check)


def _logs(settings: Settings, bridge: Any, check: Any) -> Iterator[Any]:
    from azure.core.exceptions import HttpResponseError

    try:
        bridge.credential.get_token(settings.monitor_scope)
    except Exception as exc:  # azure-identity raises several types; all mean "no token"
        yield check(
            "logs token",
            "FAIL",
            f"no token for {settings.monitor_scope}: {error_text(exc)}",
            "the app's identity must be able to get a token for Azure Monitor",
        )
        return
    yield check("logs token", "PASS", f"a token for {settings.monitor_scope}")
    table = bridge.destinations["logs"]
    where = f"rule {settings.logs_rule_id}, stream {settings.logs_stream}"
    try:
        # An empty batch: the service checks the token, the rule and the stream, and stores
        # nothing. The library itself sends nothing for an empty list, so its raw call is used.
        table.client._upload(
            settings.logs_rule_id, stream_name=settings.logs_stream, body=[], **table.extra
        )
    except HttpResponseError as exc:
        status = exc.status_code
        verdict = "FAIL" if status in (401, 403, 404) else "WARN"
        yield check(
            "logs rule",
            verdict,
            f"Logs Ingestion answered {status} for {where} ({error_text(exc)})",
            "check BRIDGE_LOGS_ENDPOINT, BRIDGE_LOGS_RULE_ID and BRIDGE_LOGS_STREAM, and that the "
            "identity holds Monitoring Metrics Publisher on the rule (it takes a few minutes)",
        )
        return
    except Exception as exc:
        yield check(
            "logs rule",
            "FAIL",
            f"could not reach {settings.logs_endpoint}: {error_text(exc)}",
            "check BRIDGE_LOGS_ENDPOINT and that this machine can reach it",
        )
        return
    yield check("logs rule", "PASS", f"Logs Ingestion accepts an empty batch for {where}")


def _entra(settings: Settings, bridge: Any, devices: list[str], check: Any) -> Iterator[Any]:
    try:
        token = bridge.credential.get_token(settings.graph_scope).token
    except Exception:  # the graph token check above already said why
        return
    roles = (token_claims(token) or {}).get("roles") or []
    if ENTRA_ROLE in roles:
        yield check("entra role", "PASS", f"the token carries {ENTRA_ROLE}")
    else:
        yield check(
            "entra role",
            "FAIL",
            f"the token lacks {ENTRA_ROLE}: every extension-attribute write will be refused",
            "grant it (infra/scripts/grant-graph-permission.sh with the entra destination)",
        )
    if not devices:
        yield check(
            "entra lookup",
            "WARN",
            "no device to look up",
            "run `python -m shared doctor --device <Intune managedDevice id>` to check one",
        )
        return
    entra = bridge.destinations["entra"]
    for device in devices:
        found = entra.lookup(device)
        if isinstance(found, CallResult):
            yield check(
                "entra lookup",
                "FAIL",
                f"device {device}: {found.reason} ({found.status or '-'})",
                "the device must be enrolled in Intune and registered in Entra",
            )
        else:
            yield check("entra lookup", "PASS", f"device {device} is Entra object {found}")
