"""Managed-identity endpoint emulator speaking App Service's protocol (api-version 2019-08-01).

With ``IDENTITY_ENDPOINT=<url>/msi/token`` and ``IDENTITY_HEADER`` set, azure-identity's real
``ManagedIdentityCredential`` (through MSAL) asks this server for tokens, so the bridge's credential
code runs unchanged locally. Tokens come from devstack.tokens and are checked by the Graph and Logs
Ingestion emulators.

Run alone: ``python -m devstack.identity --port 7073``.
"""

from __future__ import annotations

import argparse
import os
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from devstack import tokens
from devstack.serving import DevServer, JsonHandler, make_server, run_forever

TOKEN_PATH = "/msi/token"  # noqa: S105 - a URL path, not a secret
API_VERSION = "2019-08-01"
DEFAULT_ROLES = ["DeviceManagementConfiguration.ReadWrite.All"]
DEFAULT_LIFETIME = 3600
# What a system-assigned identity is called when the caller names no client_id.
SYSTEM_ASSIGNED_CLIENT_ID = "5f0c7a1e-0000-4000-8000-00000000d5e7"


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class IdentityEmulator:
    """Settings, request log and injected failures, shared by all handler threads."""

    def __init__(self, header: str, roles: list[str], lifetime: int) -> None:
        self.header = header
        self.roles = roles
        self.lifetime = lifetime
        self.initial = (list(roles), lifetime)
        self.lock = threading.Lock()
        self.log: list[dict[str, Any]] = []
        self.fail_status = 0
        self.fail_count = 0
        self.fail_until = 0.0

    def take_failure(self) -> int:
        """The status to fail this token request with, or 0 to serve it."""
        with self.lock:
            if self.fail_status and self.fail_count > 0:
                self.fail_count -= 1
                return self.fail_status
            if self.fail_status and time.monotonic() < self.fail_until:
                return self.fail_status
            return 0

    def configure(self, body: dict[str, Any]) -> None:
        """Apply an admin ``/_emulator/config`` body; raises ValueError on a bad one."""
        with self.lock:
            if "roles" in body:
                roles = body["roles"]
                if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                    raise ValueError("roles must be a list of strings")
                self.roles = roles
            if "lifetime" in body:
                if not isinstance(body["lifetime"], int):
                    raise ValueError("lifetime must be an integer number of seconds")
                self.lifetime = body["lifetime"]
            if "fail" in body:
                fail = body["fail"] or {}
                if not isinstance(fail, dict):
                    raise ValueError("fail must be an object")
                status = int(fail.get("status", 500)) if fail else 0
                self.fail_status = status
                self.fail_count = int(fail.get("count") or 0)
                seconds = float(fail.get("seconds") or 0)
                self.fail_until = time.monotonic() + seconds if seconds else 0.0

    def reset(self) -> None:
        """Back to the start-up roles and lifetime, with no request log and no injected failure."""
        with self.lock:
            self.roles, self.lifetime = list(self.initial[0]), self.initial[1]
            self.log.clear()
            self.fail_status = self.fail_count = 0
            self.fail_until = 0.0

    def record(self, resource: str | None, client_id: str | None, status: int) -> None:
        with self.lock:
            self.log.append(
                {"time": _now_iso(), "resource": resource, "client_id": client_id, "status": status}
            )


class IdentityHandler(JsonHandler):
    """Routes the token endpoint and the admin endpoints."""

    @property
    def emulator(self) -> IdentityEmulator:
        return self.server.app  # type: ignore[attr-defined,no-any-return]

    def _error(self, status: int, message: str) -> None:
        # App Service's error shape; MSAL surfaces statusCode and message to the caller.
        body = {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())}
        self.send_json(status, body)

    def do_GET(self) -> None:
        if self.path_only == TOKEN_PATH:
            self._token()
        elif self.path_only == "/_emulator/requests":
            with self.emulator.lock:
                log = list(self.emulator.log)
            self.send_json(200, {"count": len(log), "requests": log})
        elif self.path_only == "/_emulator/config":
            emu = self.emulator
            self.send_json(
                200, {"roles": emu.roles, "lifetime": emu.lifetime, "identityHeader": emu.header}
            )
        else:
            self._error(404, f"No route for {self.path_only}")

    def do_POST(self) -> None:
        try:
            body = self.read_json() or {}
        except ValueError:
            self._error(400, "Body is not JSON")
            return
        if self.path_only == "/_emulator/config":
            if not isinstance(body, dict):
                self._error(400, "Body must be a JSON object")
                return
            try:
                self.emulator.configure(body)
            except (TypeError, ValueError) as exc:
                self._error(400, str(exc))
                return
            self.send_json(200, {"roles": self.emulator.roles, "lifetime": self.emulator.lifetime})
        elif self.path_only == "/_emulator/reset":
            self.emulator.reset()
            self.send_json(200, {"reset": True})
        else:
            self._error(404, f"No route for {self.path_only}")

    def _token(self) -> None:
        emu = self.emulator
        query = self.query
        resource, client_id = query.get("resource"), query.get("client_id")
        status, message = 0, ""
        supplied = self.headers.get("X-IDENTITY-HEADER", "")
        if not secrets.compare_digest(supplied.encode(), emu.header.encode()):
            status, message = 401, "X-IDENTITY-HEADER is missing or does not match IDENTITY_HEADER"
        elif query.get("api-version") != API_VERSION:
            status, message = 400, f"api-version must be {API_VERSION}"
        elif not resource:
            status, message = 400, "The resource parameter is required"
            resource = ""
        elif failure := emu.take_failure():
            status, message = failure, "Injected failure (devstack identity emulator)"
        if status:
            emu.record(resource, client_id, status)
            self._error(status, message)
            return
        with emu.lock:
            roles, lifetime = list(emu.roles), emu.lifetime
        who = client_id or SYSTEM_ASSIGNED_CLIENT_ID
        token, expires_on = tokens.issue(resource, who, roles, lifetime)
        emu.record(resource, client_id, 200)
        self.send_json(
            200,
            {
                "access_token": token,
                "expires_on": str(expires_on),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": who,
            },
        )


def _env_roles() -> list[str]:
    raw = os.environ.get("IDENTITY_EMULATOR_ROLES")
    if raw is None:
        return list(DEFAULT_ROLES)
    return [role.strip() for role in raw.split(",") if role.strip()]


def build_server(
    port: int = 0,
    *,
    header: str | None = None,
    roles: list[str] | None = None,
    lifetime: int | None = None,
) -> DevServer:
    """Build (not start) the emulator; arguments override the environment's settings."""
    emulator = IdentityEmulator(
        header=header or os.environ.get("IDENTITY_HEADER") or secrets.token_urlsafe(24),
        roles=_env_roles() if roles is None else list(roles),
        lifetime=lifetime
        if lifetime is not None
        else int(os.environ.get("IDENTITY_EMULATOR_TOKEN_LIFETIME") or DEFAULT_LIFETIME),
    )
    return make_server(IdentityHandler, port, emulator)


def main(argv: list[str] | None = None) -> int:
    """Run the emulator in the foreground until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m devstack.identity", description=__doc__)
    parser.add_argument("--port", type=int, default=7073, help="0 picks a free port")
    args = parser.parse_args(argv)
    return run_forever(build_server(args.port), "identity")


if __name__ == "__main__":
    raise SystemExit(main())
