"""Operator commands: `python -m shared replay [--reason R ...] [--dry-run]` and
`python -m shared doctor [--script ID ...] [--probe-write] [--json]` (preflight checks)."""

from __future__ import annotations

import argparse
import json
import sys

from shared.settings import SettingsError, get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser("replay", help="move poison messages back to the queue")
    replay.add_argument(
        "--reason",
        action="append",
        help="only messages poisoned for this reason (repeatable), e.g. forbidden",
    )
    replay.add_argument("--dry-run", action="store_true", help="count, move nothing")
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
    from shared.replay import replay as run_replay
    from shared.runtime import Bridge

    storage = Bridge.from_settings(settings).storage
    result = run_replay(storage, set(args.reason) if args.reason else None, args.dry_run)
    print(
        json.dumps({"replayed": result.replayed, "kept": result.kept, "byReason": result.by_reason})
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
