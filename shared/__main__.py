"""Operator commands, each with an operator's least rights and creating nothing:
`python -m shared replay [--reason R ...] [--destination D ...] [--dry-run]`,
`python -m shared status [--json]` and
`python -m shared doctor [--script ID ...] [--probe-write] [--json]` (preflight checks)."""

from __future__ import annotations

import argparse
import json
import sys

from shared.settings import DESTINATIONS, SettingsError, get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser("replay", help="move poison messages back to their queue")
    replay.add_argument(
        "--reason",
        action="append",
        help="only messages poisoned for this reason (repeatable), e.g. forbidden",
    )
    replay.add_argument(
        "--destination",
        action="append",
        choices=DESTINATIONS,
        help="only this destination's poison queue (repeatable; default: all)",
    )
    replay.add_argument("--dry-run", action="store_true", help="count, move nothing")
    status = commands.add_parser("status", help="queues, poison by reason, budget, devices")
    status.add_argument("--json", action="store_true", help="one JSON object")
    from shared import doctor

    doctor.add_arguments(
        commands.add_parser("doctor", help="preflight: settings, Graph role and routes, storage")
    )
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return doctor.main(args)  # it reports invalid settings itself, one problem per line
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    from shared.graph import make_credential
    from shared.runtime import storage_credential
    from shared.store import Storage

    shared = (
        None
        if settings.storage_connection
        else make_credential(settings.azure_client_id, settings.credential_kind)
    )
    storage = Storage(settings, storage_credential(settings, shared))  # creates nothing
    from azure.core.exceptions import ResourceNotFoundError

    try:
        if args.command == "status":
            from shared.status import collect, render

            facts = collect(storage, settings)
            print(json.dumps(facts, indent=2) if args.json else render(facts))
            return 0
        from shared.replay import replay as run_replay

        result = run_replay(
            storage, set(args.reason) if args.reason else None, args.dry_run, args.destination
        )
    except ResourceNotFoundError as exc:
        # Operators hold no right to create: a missing queue or table is the deployment's to make.
        what = getattr(exc, "error_code", None) or "ResourceNotFound"
        print(
            f"a queue or the table does not exist ({what}); `azd provision` declares them, "
            "and locally the function host creates them when it starts",
            file=sys.stderr,
        )
        return 1
    print(
        json.dumps(
            {
                "replayed": result.replayed,
                "kept": result.kept,
                "byReason": result.by_reason,
                "byDestination": result.by_destination,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
