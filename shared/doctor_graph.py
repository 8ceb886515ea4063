"""The doctor's Graph checks: the token and its app role, each script, the run-state route, and
the optional write probe (a write like any other: it takes its slot of the budget)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from shared.checks import FAIL, PASS, WARN, Check, error_text, token_claims
from shared.graph import ROUTE_UNSUPPORTED, GraphClient
from shared.outcomes import CallResult, Outcome
from shared.settings import BUDGET_WAIT_SECONDS, LOOKUP, Settings
from shared.telemetry import clean

__all__ = ["PROBE_DEVICE_ID", "REQUIRED_ROLE", "graph_checks", "token_check"]

REQUIRED_ROLE = "DeviceManagementConfiguration.ReadWrite.All"
# Graph's docs list this one for the PATCH as well; the bridge's grant is REQUIRED_ROLE.
ALTERNATE_ROLE = "DeviceManagementManagedDevices.ReadWrite.All"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
# `--probe-write` writes the run state of this device id: all zeros, ending in "d0c7" (doctor).
PROBE_DEVICE_ID = "00000000-0000-0000-0000-00000000d0c7"
PROBE_OUTPUT = (
    "Written by the bridge's preflight (python -m shared doctor --probe-write) for a device id "
    "that no real device has; safe to ignore."
)
SCRIPTS = "/deviceManagement/deviceComplianceScripts"
GRANT = (
    "grant it to the identity: `azd env set BRIDGE_GRANT_GRAPH_PERMISSION true && azd provision`, "
    "or an administrator runs `infra/scripts/grant-graph-permission.sh {principal}`; a new grant "
    "reaches only tokens issued after it (docs/operations.md, Grant the Graph permission)"
)


def _credential_name(settings: Settings) -> str:
    if settings.credential_kind == "default":
        return "DefaultAzureCredential"
    if settings.azure_client_id:
        return f"the managed identity {settings.azure_client_id}"
    return "the system-assigned managed identity"


def token_check(settings: Settings, bridge: Any) -> tuple[Check, str | None]:
    """The role verdict and the identity's object id (None when no token came)."""
    try:
        token = bridge.credential.get_token(settings.graph_scope).token
    except Exception as exc:  # azure-identity raises several types; all mean "no token"
        return (
            Check(
                "token",
                FAIL,
                f"no token for {settings.graph_scope} from {_credential_name(settings)}: "
                f"{error_text(exc)}",
                "in Azure, check the app runs as the identity AZURE_CLIENT_ID names; locally, "
                "set IDENTITY_ENDPOINT/IDENTITY_HEADER (the identity emulator) or use "
                "BRIDGE_CREDENTIAL=default after az login",
            ),
            None,
        )
    claims = token_claims(token)
    if claims is None:
        return (
            Check(
                "token",
                WARN,
                "got a token, but it is not a readable JWT, so its roles cannot be checked here",
                "the Graph probes below show whether it is allowed",
            ),
            "<principal-id>",
        )
    principal = str(claims.get("oid") or "<principal-id>")
    who = f"appid {clean(claims.get('appid') or claims.get('azp') or '?')}, object id {principal}"
    audience = str(claims.get("aud") or "")
    if audience.rstrip("/") not in (settings.graph_root, GRAPH_APP_ID):
        return (
            Check(
                "token",
                FAIL,
                f"the token's audience is {clean(audience)!r}, not {settings.graph_root} ({who})",
                "set BRIDGE_GRAPH_CLOUD to the tenant's cloud",
            ),
            principal,
        )
    roles = claims.get("roles") if isinstance(claims.get("roles"), list) else []
    if not roles and claims.get("scp"):
        return (
            Check(
                "token",
                WARN,
                f"a delegated (user) token with scopes {clean(claims['scp'])!r}: app roles do not "
                f"apply, so the app's identity is not what is checked here ({who})",
                f"run with the app's managed identity to check its {REQUIRED_ROLE}",
            ),
            principal,
        )
    if REQUIRED_ROLE in roles:
        return Check("token", PASS, f"the token carries {REQUIRED_ROLE} ({who})"), principal
    listed = ", ".join(clean(r) for r in roles) or "none"
    if ALTERNATE_ROLE in roles:
        return (
            Check(
                "token",
                WARN,
                f"the token lacks {REQUIRED_ROLE} but has {ALTERNATE_ROLE}, which Graph also "
                f"lists for the run-state PATCH ({who})",
                GRANT.format(principal=principal),
            ),
            principal,
        )
    return (
        Check(
            "token",
            FAIL,
            f"the token lacks {REQUIRED_ROLE}, so Graph will refuse every write (roles: {listed}; "
            f"{who})",
            GRANT.format(principal=principal),
        ),
        principal,
    )


def _status(result: CallResult) -> str:
    if result.status is None:
        return result.reason
    text = f"{result.status} {clean(result.error_code or '')}".rstrip()
    return f"{text}, request-id {clean(result.request_id or '-')}"


def _graph_failure(
    name: str, result: CallResult, what: str, graph_url: str, principal: str | None
) -> Check:
    """The verdict for a Graph answer that is not a success."""
    status = _status(result)
    code = (result.error_code or "").strip().lower()
    if result.status == 400 and code == ROUTE_UNSUPPORTED:
        return Check(
            name,
            FAIL,
            f"Graph refuses the deviceRunStates route ({status}): every report will be "
            "dead-lettered as endpoint_unsupported",
            "see docs/operations.md, Runbook, endpoint_unsupported: reports are still kept "
            "(telemetry, run-state table, poison queue); replay once Graph accepts the call",
        )
    if result.status == 403:
        return Check(
            name,
            FAIL,
            f"Graph refused {what} ({status}): the identity lacks {REQUIRED_ROLE}, or the grant "
            "has not reached its token yet",
            GRANT.format(principal=principal or "<principal-id>"),
        )
    if result.status == 401:
        return Check(
            name,
            FAIL,
            f"Graph refused the token for {what} ({status})",
            "check BRIDGE_GRAPH_CLOUD matches the tenant's cloud",
        )
    if result.status == 404:
        return Check(
            name,
            FAIL,
            f"Graph has no {what} in this tenant ({status})",
            "check the script id in Intune (Devices > Compliance > Scripts) and "
            "BRIDGE_ALLOWED_SCRIPT_IDS",
        )
    if result.reason in ("connection_error", "timeout", "token_unavailable"):
        return Check(
            name,
            FAIL,
            f"could not reach Graph at {graph_url} for {what} ({result.reason})",
            "check outbound HTTPS from here, and GRAPH_BASE_URL if it is set",
        )
    if result.outcome is Outcome.TRANSIENT:
        return Check(
            name,
            WARN,
            f"not checked: Graph answered {status} ({result.reason}) for {what}",
            "run the doctor again in a minute",
        )
    return Check(name, FAIL, f"Graph refused {what} ({status}, {result.reason})", "")


def graph_checks(
    settings: Settings,
    bridge: Any,
    script_ids: list[str],
    principal: str | None,
    probe_write: bool,
) -> Iterator[Check]:
    graph: GraphClient = bridge.graph
    found: list[str] = []
    for script_id in script_ids:
        what = f"compliance script {script_id}"
        result = graph.get(f"{SCRIPTS}/{script_id}")
        if result.outcome is Outcome.DELIVERED:
            found.append(script_id)
            yield Check("script", PASS, f"Graph has {what} ({_status(result)})")
        else:
            yield _graph_failure("script", result, what, settings.graph_url, principal)
    if script_ids and not found:
        yield Check(
            "run-state route",
            WARN,
            "not probed: no compliance script passed the check above",
            "fix the script check first",
        )
    for script_id in found:
        what = f"the run states of script {script_id}"
        result = graph.get(f"{SCRIPTS}/{script_id}/deviceRunStates?$top=1")
        if result.outcome is Outcome.DELIVERED:
            yield Check(
                "run-state route",
                PASS,
                f"GET {SCRIPTS}/{script_id}/deviceRunStates answers ({_status(result)})"
                + ("" if probe_write else "; only --probe-write shows whether a PATCH is routed"),
            )
        else:
            yield _graph_failure("run-state route", result, what, settings.graph_url, principal)
    if probe_write and found:
        yield _probe_write(settings, bridge, found[0], principal)


def _probe_write(settings: Settings, bridge: Any, script_id: str, principal: str | None) -> Check:
    graph = bridge.graph
    from shared.destinations.runstates import run_state_id
    from shared.mapping import DeviceState
    from shared.models import DetectionState

    now = datetime.now(UTC)
    state = DeviceState(
        detection_state=DetectionState.UNKNOWN,
        last_state_update=now,
        expected_state_update=now,
        last_sync=now,
        script_output=PROBE_OUTPUT,
        script_error="",
    )
    template = settings.run_state_lookup_fallback or settings.run_state_id_template
    if template == LOOKUP:
        template = "{scriptId}:{deviceId}"
    key = run_state_id(template, script_id, PROBE_DEVICE_ID)
    what = f"the probe PATCH of run state {key}"
    # The probe is a write like any other: it takes its slot of the tenant's write budget.
    if bridge.budget.acquire(BUDGET_WAIT_SECONDS).at is None:
        return Check(
            "write probe",
            WARN,
            f"{what} was not sent: the write budget is busy or Graph throttled the app",
            "run the doctor again in a minute",
        )
    try:
        result = graph.patch_run_state(script_id, key, state.patch_body())
    except ValueError as exc:
        return Check("write probe", FAIL, f"{what}: {clean(exc)}", "check the run-state template")
    if result.outcome is Outcome.DELIVERED:
        return Check("write probe", PASS, f"Graph accepted {what} ({_status(result)})")
    if result.status == 404:
        return Check(
            "write probe",
            WARN,
            f"Graph routed {what} but answered {_status(result)}: the probe device is not a real "
            "one, so this does not show whether a real device's run state can be written",
            "send one real report and look for `delivered` (README, The live PATCH endpoint)",
        )
    return _graph_failure("write probe", result, what, settings.graph_url, principal)
