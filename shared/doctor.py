"""Preflight: `python -m shared doctor [--script ID ...] [--probe-write] [--json]`.

Checks what the bridge needs before agents roll out, each with a verdict (PASS, WARN or FAIL), a
one-line reason and what to do: the settings, a Graph token from the configured credential and the
app role it carries, each compliance script, the `deviceRunStates` route, and storage in queue
mode. It exits 0 only when nothing FAILs.

It reads the same settings as the function app, from the environment. It checks what *the
credential it runs with* may do: run it with the app's settings where the app's managed identity
is available, or with `BRIDGE_CREDENTIAL=default` to check your own sign-in. The token's payload is
decoded without verifying it, only to read its `roles`; the token itself is never printed.

By default it only reads from Graph. `--probe-write` also PATCHes the run state of a device id
that no real device has (`PROBE_DEVICE_ID`), which is the only way to see whether Graph routes the
write; the probe state's scriptOutput says where it came from.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from shared.graph import ROUTE_UNSUPPORTED, GraphClient, GraphResult, Outcome
from shared.ids import canonical_guid
from shared.settings import BUDGET_WAIT_SECONDS, LOOKUP, Settings, SettingsError
from shared.telemetry import SCRIPT_OUTPUT_LIMIT, clean

__all__ = [
    "PROBE_DEVICE_ID",
    "REQUIRED_ROLE",
    "Check",
    "add_arguments",
    "main",
    "run_checks",
    "token_claims",
]

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
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


@dataclass(frozen=True, slots=True)
class Check:
    """One verdict: `action` says what to do when it is not a PASS."""

    name: str
    verdict: str
    reason: str
    action: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--script",
        action="append",
        metavar="ID",
        help="compliance script id to probe (repeatable); default: BRIDGE_ALLOWED_SCRIPT_IDS",
    )
    parser.add_argument(
        "--probe-write",
        action="store_true",
        help=f"also PATCH the run state of the test device {PROBE_DEVICE_ID} (writes to Graph)",
    )
    parser.add_argument(
        "--device",
        action="append",
        metavar="ID",
        help="Intune managedDevice id to look up in Entra (the entra destination; repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the checks as one JSON object")


# ---- the checks ---------------------------------------------------------------------------------


def run_checks(
    environ: Mapping[str, str],
    scripts: list[str] | None = None,
    *,
    probe_write: bool = False,
    devices: list[str] | None = None,
) -> Iterator[Check]:
    """Every check in order; later ones are skipped when what they need failed."""
    try:
        settings = Settings.from_env(environ)
    except SettingsError as exc:
        for problem in str(exc).removeprefix("invalid settings: ").split("; "):
            yield Check(
                "settings",
                FAIL,
                problem,
                "fix this app setting (README, Settings); nothing else can be checked until then",
            )
        return
    yield from _settings_checks(settings, environ)
    script_ids, problems = _script_ids(settings, scripts)
    yield from problems

    from shared.runtime import Bridge

    bridge = Bridge.from_settings(settings)
    token_check, principal = _token_check(settings, bridge)
    yield token_check
    if token_check.verdict != FAIL or principal is not None:
        yield from _graph_checks(settings, bridge, script_ids, principal, probe_write)
    yield from _storage_checks(settings, bridge)
    from shared.doctor_destinations import destination_checks

    yield from destination_checks(settings, bridge, devices, Check)


def _settings_checks(settings: Settings, environ: Mapping[str, str]) -> Iterator[Check]:
    graph = settings.graph_url
    if settings.graph_base_url:
        graph += f" (GRAPH_BASE_URL; the token audience stays {settings.graph_root})"
    yield Check(
        "settings",
        PASS,
        f"valid: {settings.delivery_mode} mode, cloud {settings.graph_cloud.value}, auth "
        f"{','.join(sorted(settings.auth_modes))}, Graph {graph}",
    )
    if settings.credential == "default":
        yield Check(
            "credential",
            WARN,
            "BRIDGE_CREDENTIAL=default: DefaultAzureCredential (your own sign-in), so the Graph "
            "checks below test that identity, not the app's managed identity",
            "never set BRIDGE_CREDENTIAL=default in Azure",
        )
    elif not settings.azure_client_id:
        yield Check(
            "credential",
            WARN,
            "AZURE_CLIENT_ID is unset: the system-assigned managed identity is used",
            "the template runs the app as a user-assigned identity: set AZURE_CLIENT_ID to its "
            "client id",
        )
    else:
        yield Check(
            "credential", PASS, f"managed identity with client id {settings.azure_client_id}"
        )
    if settings.telemetry_script_output:
        yield Check(
            "telemetry",
            WARN,
            "BRIDGE_TELEMETRY_SCRIPT_OUTPUT=true: script output (up to "
            f"{SCRIPT_OUTPUT_LIMIT} characters) is sent to Application Insights",
            "turn it off unless the scripts' output holds nothing sensitive",
        )
    elif environ.get("WEBSITE_SITE_NAME") and not environ.get(
        "APPLICATIONINSIGHTS_CONNECTION_STRING"
    ):
        yield Check(
            "telemetry",
            WARN,
            "APPLICATIONINSIGHTS_CONNECTION_STRING is unset: no events or metrics leave the app",
            "deploy with infra/main.bicep, which sets it (and "
            "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true)",
        )
    else:
        yield Check("telemetry", PASS, "script output is not sent (BRIDGE_TELEMETRY_SCRIPT_OUTPUT)")


def _script_ids(settings: Settings, given: list[str] | None) -> tuple[list[str], list[Check]]:
    problems: list[Check] = []
    ids: list[str] = []
    for raw in given or []:
        try:
            ids.append(canonical_guid(raw.strip()))
        except ValueError:
            problems.append(
                Check("script", FAIL, f"--script {clean(raw)!r} is not a GUID", "pass a script id")
            )
    if given is None:
        ids = sorted(settings.allowed_script_ids)
    if not ids and not problems:
        problems.append(
            Check(
                "script",
                WARN,
                "no compliance script to probe: BRIDGE_ALLOWED_SCRIPT_IDS is empty (every script "
                "is accepted)",
                "set BRIDGE_ALLOWED_SCRIPT_IDS to the scripts the bridge may write, or pass "
                "--script <id>",
            )
        )
    return ids, problems


def token_claims(token: str) -> dict[str, Any] | None:
    """The JWT payload as JSON, unverified (only to read claims); None if it is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def _credential_name(settings: Settings) -> str:
    if settings.credential == "default":
        return "DefaultAzureCredential"
    if settings.azure_client_id:
        return f"the managed identity {settings.azure_client_id}"
    return "the system-assigned managed identity"


def error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return clean(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _token_check(settings: Settings, bridge: Any) -> tuple[Check, str | None]:
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


def _status(result: GraphResult) -> str:
    if result.status is None:
        return result.reason
    text = f"{result.status} {clean(result.error_code or '')}".rstrip()
    return f"{text}, request-id {clean(result.request_id or '-')}"


def _graph_failure(
    name: str, result: GraphResult, what: str, graph_url: str, principal: str | None
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


def _graph_checks(
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


def _storage_checks(settings: Settings, bridge: Any) -> Iterator[Check]:
    from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

    from shared.runtime import storage_credential
    from shared.store import PAYLOAD_CONTAINER, QUEUES, TABLE, Storage

    credential = storage_credential(settings, bridge.credential)
    where = "AzureWebJobsStorage" if settings.storage_connection else "AzureWebJobsStorage__*"
    try:
        storage = Storage(settings, credential)  # no ensure(): the doctor creates nothing
        queued = poisoned = 0
        for name in settings.destinations:
            queued += storage.queue(name).get_queue_properties().approximate_message_count
            poisoned += (
                storage.queue(name, poison=True).get_queue_properties().approximate_message_count
            )
        next(iter(storage.table.list_entities(results_per_page=1)), None)
        storage.payloads.get_container_properties()
    except ResourceNotFoundError as exc:
        yield Check(
            "storage",
            FAIL,
            f"reachable, but a queue, the table {TABLE} or the container {PAYLOAD_CONTAINER} "
            f"does not exist ({error_text(exc)})",
            "azd provision creates them; locally the host creates them when it starts",
        )
        return
    except HttpResponseError as exc:
        yield Check(
            "storage",
            FAIL,
            f"storage refused the request ({exc.status_code}, {clean(exc.error_code or '-')})",
            "the identity needs Storage Queue Data Contributor, Storage Table Data Contributor "
            "and Storage Blob Data Owner (infra/app/rbac.bicep); new role assignments take a "
            "few minutes",
        )
        return
    except (AzureError, ValueError) as exc:
        yield Check(
            "storage",
            FAIL,
            f"could not reach storage ({where}): {error_text(exc)}",
            f"check {where} and that this machine can reach the storage account",
        )
        return
    yield Check(
        "storage",
        PASS,
        f"queues {', '.join(QUEUES[n] for n in settings.destinations)} ({queued} waiting) "
        f"and their poison queues, table {TABLE} and container {PAYLOAD_CONTAINER} are "
        "reachable",
    )
    if poisoned:
        yield Check(
            "dead letters",
            WARN,
            f"{poisoned} report(s) in the poison queues",
            "find their reason (docs/operations.md, Runbook), fix it, then run "
            "`python -m shared replay`",
        )


# ---- output -------------------------------------------------------------------------------------


def _write_text(checks: Iterator[Check], out: TextIO) -> list[Check]:
    seen: list[Check] = []
    for check in checks:
        seen.append(check)
        out.write(f"{check.verdict}  {check.name:<16} {check.reason}\n")
        if check.action and check.verdict != PASS:
            out.write(f"{'':6}{'':<16} -> {check.action}\n")
        out.flush()
    counts = {v: sum(c.verdict == v for c in seen) for v in (FAIL, WARN, PASS)}
    verdict = FAIL if counts[FAIL] else WARN if counts[WARN] else PASS
    out.write(
        f"doctor: {verdict} ({counts[FAIL]} FAIL, {counts[WARN]} WARN, {counts[PASS]} PASS)\n"
    )
    return seen


def main(args: argparse.Namespace, out: TextIO | None = None, environ: Any = None) -> int:
    """Run every check and print the verdicts; 0 only when nothing FAILs."""
    out = out or sys.stdout
    checks = run_checks(
        os.environ if environ is None else environ,
        args.script,
        probe_write=args.probe_write,
        devices=args.device,
    )
    if args.json:
        seen = list(checks)
        failed = any(c.verdict == FAIL for c in seen)
        warned = any(c.verdict == WARN for c in seen)
        verdict = FAIL if failed else WARN if warned else PASS
        out.write(json.dumps({"verdict": verdict, "checks": [asdict(c) for c in seen]}) + "\n")
    else:
        seen = _write_text(checks, out)
    return 1 if any(c.verdict == FAIL for c in seen) else 0
