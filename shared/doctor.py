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
import json
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import Any, TextIO

from shared.checks import FAIL, PASS, WARN, Check, error_text
from shared.doctor_graph import PROBE_DEVICE_ID, graph_checks, token_check
from shared.ids import canonical_guid
from shared.settings import Settings, SettingsError
from shared.telemetry import SCRIPT_OUTPUT_LIMIT, clean

__all__ = ["add_arguments", "main", "run_checks"]


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
    token, principal = token_check(settings, bridge)
    yield token
    if token.verdict != FAIL or principal is not None:
        yield from graph_checks(settings, bridge, script_ids, principal, probe_write)
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
    if settings.credential_kind == "default":
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


def _storage_checks(settings: Settings, bridge: Any) -> Iterator[Check]:
    from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

    from shared.runstate_table import TABLE
    from shared.runtime import storage_credential
    from shared.settings import QUEUES
    from shared.store import PAYLOAD_CONTAINER, Storage

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
