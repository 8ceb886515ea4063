"""`python -m devstack up | host | graph | identity | logs | azurite [--port N]`: all or a part."""

from __future__ import annotations

import sys

USAGE = "usage: python -m devstack {up|host|graph|identity|logs|azurite} [--port N] [options]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"up", "host", "graph", "identity", "logs", "azurite"}:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "up":
        from devstack import up as part
    elif command == "host":
        from devstack import host as part
    elif command == "graph":
        from devstack import graph as part
    elif command == "identity":
        from devstack import identity as part
    elif command == "logs":
        from devstack import logs as part
    else:
        from devstack import azurite as part
    return part.main(rest)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
