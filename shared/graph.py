"""The only code that talks to Microsoft Graph: one pooled session, one credential, outcomes."""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from shared import __version__
from shared.ids import canonical_guid
from shared.outcomes import CallResult, Outcome

__all__ = [
    "GraphClient",
    "Outcome",
    "TokenSource",
    "make_credential",
    "parse_retry_after",
    "run_state_url",
]

USER_AGENT = f"intune-compliance-bridge/{__version__}"
# Graph answers this for the deviceRunStates navigation on tenants where the write is not routed.
ROUTE_UNSUPPORTED = "no method match route template"
# Any claims challenge makes azure-identity bypass its token cache and fetch a new token.
REFRESH_CLAIMS = '{"access_token":{"nbf":{"essential":true}}}'
FORBIDDEN_REFRESH_INTERVAL = 30.0
_RUN_STATE_ID = re.compile(r"[A-Za-z0-9:_.-]{1,256}")
# Graph's Retry-After is honoured up to an hour, never more (a far date, or 1e308).
MAX_RETRY_AFTER = 3600.0


class TokenSource(Protocol):
    def get_token(self, *scopes: str, **kwargs: Any) -> Any: ...


def make_credential(client_id: str | None, kind: str = "managed_identity") -> TokenSource:
    """A managed identity in Azure; `default` only when a setting asks (a laptop's az login)."""
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    if kind == "default":
        return DefaultAzureCredential(
            managed_identity_client_id=client_id, exclude_interactive_browser_credential=True
        )
    return (
        ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait: integer (`3`), fractional (`2.128`, Graph's own sample) or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def run_state_url(base_url: str, script_id: str, run_state_id: str) -> str:
    """Both ids are checked here, so nothing like `../`, `%2F`, `?` or `#` can retarget the call."""
    script_id = canonical_guid(script_id)
    if not _RUN_STATE_ID.fullmatch(run_state_id):
        raise ValueError("run-state id has characters that are not allowed in a Graph key")
    scripts = f"{base_url}/deviceManagement/deviceComplianceScripts"
    return f"{scripts}/{script_id}/deviceRunStates/{run_state_id}"


def _ci(mapping: Any) -> CaseInsensitiveDict[Any]:
    """Graph spells `innerError` both ways: read its error body's keys case-insensitively."""
    if not isinstance(mapping, dict):
        return CaseInsensitiveDict()
    return CaseInsensitiveDict({k: v for k, v in mapping.items() if isinstance(k, str)})


def _graph_error(response: requests.Response) -> tuple[str | None, str | None]:
    """Graph's error `code` and inner `request-id`, if the body has them."""
    try:
        body = response.json()
    except ValueError:
        return None, None
    error = _ci(body).get("error")
    code = _ci(error).get("code")
    request_id = _ci(_ci(error).get("innerError")).get("request-id")
    return (
        code if isinstance(code, str) else None,
        request_id if isinstance(request_id, str) else None,
    )


def classify(status: int, error_code: str | None) -> tuple[Outcome, str]:
    if 200 <= status < 300:
        return Outcome.DELIVERED, "delivered"
    if status == 429:
        return Outcome.TRANSIENT, "throttled"
    if status == 401:
        return Outcome.TRANSIENT, "unauthorized"  # a token refresh or role propagation can fix it
    if status in (501, 505):
        return Outcome.PERMANENT, "not_implemented" if status == 501 else "http_version"
    if status >= 500 or status in (408, 409, 423):
        return Outcome.TRANSIENT, "server_error" if status >= 500 else "conflict"
    if status == 400 and error_code and error_code.strip().lower() == ROUTE_UNSUPPORTED:
        return Outcome.PERMANENT, "endpoint_unsupported"
    reasons = {400: "bad_request", 403: "forbidden", 404: "not_found", 422: "unprocessable"}
    return Outcome.PERMANENT, reasons.get(status, "rejected")


class GraphClient:
    """Created once per worker: the session pools connections, the credential caches tokens."""

    def __init__(
        self,
        base_url: str,
        scope: str,
        credential: TokenSource,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 15.0,
        pool_size: int = 16,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.scope = scope
        self._credential = credential
        self._timeout = (connect_timeout, read_timeout)
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._lock = threading.Lock()
        self._last_refresh = -FORBIDDEN_REFRESH_INTERVAL

    def patch_run_state(
        self,
        script_id: str,
        run_state_id: str,
        body: dict[str, Any],
        pace: Callable[[], bool] | None = None,
    ) -> CallResult:
        url = run_state_url(self.base_url, script_id, run_state_id)
        return self.call("PATCH", url, body, pace=pace)[0]

    def get(self, path: str) -> CallResult:
        """A read under the Graph root (the preflight's probes); `path` starts with `/`."""
        return self.call("GET", f"{self.base_url}{path}")[0]

    def call(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        *,
        pace: Callable[[], bool] | None = None,
    ) -> tuple[CallResult, Any]:
        """One logical call and its JSON answer (None if it has none).

        A 401, or a 403 now and then, is retried once with a fresh token; a write's second
        try takes its own slot of the write budget through `pace` (False: no slot, no retry).
        """
        result, data = self._send(method, url, body, fresh_token=False)
        stale = result.status == 401 or (result.status == 403 and self._refresh_allowed())
        if stale and (pace is None or pace()):
            result, data = self._send(method, url, body, fresh_token=True)
        return result, data

    def _refresh_allowed(self) -> bool:
        # A newly granted app role only reaches new tokens, and the credential caches tokens for
        # hours: refresh after a 403, but not more often than this, so a tenant that lacks the
        # role does not turn every message into a token request.
        with self._lock:
            now = time.monotonic()
            if now - self._last_refresh < FORBIDDEN_REFRESH_INTERVAL:
                return False
            self._last_refresh = now
            return True

    def _token(self, fresh: bool) -> str:
        if fresh:
            return self._credential.get_token(self.scope, claims=REFRESH_CLAIMS).token
        return self._credential.get_token(self.scope).token

    def _send(
        self, method: str, url: str, body: dict[str, Any] | None, *, fresh_token: bool
    ) -> tuple[CallResult, Any]:
        client_request_id = str(uuid.uuid4())
        started = time.monotonic()

        def failed(reason: str) -> tuple[CallResult, Any]:
            result = CallResult(
                Outcome.TRANSIENT,
                reason,
                client_request_id=client_request_id,
                elapsed=time.monotonic() - started,
            )
            return result, None

        try:
            token = self._token(fresh_token)
        except Exception:  # azure-identity raises several types; all mean "no token right now"
            return failed("token_unavailable")
        headers = {"Authorization": f"Bearer {token}", "client-request-id": client_request_id}
        try:
            response = self._session.request(
                method, url, json=body, headers=headers, timeout=self._timeout
            )
        except requests.Timeout:
            return failed("timeout")
        except requests.RequestException:
            return failed("connection_error")
        error_code, inner_request_id = (None, None) if response.ok else _graph_error(response)
        outcome, reason = classify(response.status_code, error_code)
        data = None
        if response.ok and response.content:
            try:
                data = response.json()
            except ValueError:
                data = None
        result = CallResult(
            outcome,
            reason,
            status=response.status_code,
            error_code=error_code,
            request_id=response.headers.get("request-id") or inner_request_id,
            client_request_id=client_request_id,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            elapsed=time.monotonic() - started,
        )
        return result, data
