"""The trust boundary against a hostile client: every input a client controls gets a planned 4xx,
the order is size/type checks, authenticate, then parse, and no setting an unused mode needs can
take the bridge down. In process through `api.ingest`, with Azurite where a version is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from shared import api, envelope, mapping, runtime
from shared.mapping import reject_duplicates
from shared.runtime import Bridge
from shared.settings import Settings, SettingsError, get_settings
from tests.certs import header, trusted
from tests.stack import DEVICE, SCRIPT, UNREACHABLE_STORAGE, StorageView, report_body

JSON = {"Content-Type": "application/json"}
NOW = datetime.now(UTC)
KEY_VAULT_REFERENCE = (
    "@Microsoft.KeyVault(SecretUri=https://kv-bridge.vault.azure.net/secrets/hmac/)"
)


def sync_bridge(**values: str) -> Bridge:
    """Sync mode without Graph: for answers decided before any delivery."""
    settings = Settings.from_env(
        {"BRIDGE_DELIVERY_MODE": "sync", "AzureWebJobsStorage": UNREACHABLE_STORAGE, **values}
    )
    return Bridge(settings=settings, graph=None)  # type: ignore[arg-type]  # never reached


def post(
    bridge: Bridge, body: Any, headers: dict[str, str] | None = None, **kw: Any
) -> api.ApiResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.ingest("POST", {**JSON, **(headers or {})}, raw, bridge=bridge, now=NOW, **kw)


def slug(response: api.ApiResponse) -> str:
    return str(response.body["type"]).rpartition(":")[2]


def fields(response: api.ApiResponse) -> list[str]:
    return [error["field"] for error in response.body.get("errors", [])]


def execution(**changes: Any) -> dict[str, Any]:
    return {**report_body()["execution"], **changes}


# --- timestamps a client controls ----------------------------------------------------------------


def finished(text: str) -> dict[str, Any]:
    return {"execution": execution(startedAt=None, finishedAt=text)}


FINISHED = "execution.finishedAt"
STATE = {"detectionState": "fail", "lastStateUpdateDateTime": "2026-11-28T10:00:00Z"}
EXTREME = [
    ("finished-year-1-positive-offset", finished("0001-01-01T00:30:00+01:00"), FINISHED),
    ("next-run-year-9999-negative-offset", {"nextRunAt": "9999-12-31T23:59:59-01:00"}, "nextRunAt"),
    ("last-sync-year-1-positive-offset", {"lastSyncAt": "0001-01-01T01:00:00+05:00"}, "lastSyncAt"),
    ("finished-year-999", finished("0999-12-31T23:59:59Z"), FINISHED),
    ("finished-1999", finished("1999-12-31T23:59:59Z"), FINISHED),
    ("next-run-two-years-ahead", {"nextRunAt": "2028-12-01T00:00:00Z"}, "nextRunAt"),
    ("next-run-1999", {"nextRunAt": "1999-06-01T00:00:00Z"}, "nextRunAt"),
    ("full-width-digits", finished("\uff12\uff10\uff12\uff16-11-28T10:00:02Z"), FINISHED),
    ("arabic-indic-digits", finished("\u0662\u0660\u0662\u0666-11-28T10:00:02Z"), FINISHED),
    ("leading-space", finished(" 2026-11-28T10:00:02Z"), FINISHED),
    ("trailing-newline", finished("2026-11-28T10:00:02Z\n"), FINISHED),
    (
        "state-expected-9999",
        {
            "execution": None,
            "state": {**STATE, "expectedStateUpdateDateTime": "9999-12-31T23:59:59-01:00"},
        },
        "state.expectedStateUpdateDateTime",
    ),
]


@pytest.mark.parametrize(("changes", "field"), [pytest.param(c, f, id=i) for i, c, f in EXTREME])
def test_a_timestamp_out_of_range_or_not_ascii_is_a_422_naming_the_field(
    changes: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in report_body(**changes).items() if v is not None}
    if "execution" in body:
        body["execution"] = {k: v for k, v in body["execution"].items() if v is not None}
    response = post(sync_bridge(), body)
    assert response.status == 422, response.body
    assert field in fields(response), response.body


def test_a_year_999_report_never_freezes_the_pair_in_queue_mode(storage: StorageView) -> None:
    settings = Settings.from_env({"AzureWebJobsStorage": storage.connection_string})
    bridge = Bridge(settings=settings, graph=None)  # type: ignore[arg-type]  # queue mode: no Graph
    frozen = report_body(
        execution=execution(startedAt="0999-12-31T23:59:58Z", finishedAt="0999-12-31T23:59:59Z")
    )
    assert post(bridge, frozen).status == 422
    genuine = post(bridge, report_body())
    assert genuine.status == 202, genuine.body
    assert genuine.body["status"] == "queued"


def test_deeply_nested_stdout_maps_without_failing_the_request(storage: StorageView) -> None:
    settings = Settings.from_env({"AzureWebJobsStorage": storage.connection_string})
    bridge = Bridge(settings=settings, graph=None)  # type: ignore[arg-type]  # queue mode: no Graph
    response = post(bridge, report_body(execution=execution(stdout="[" * 100_000)))
    assert response.status == 202, response.body


# --- the envelope -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "status"), [("²", 400), ("٣", 400), ("9" * 5000, 413), (" 12", 400), ("+2", 400)]
)
def test_a_content_length_that_is_not_ascii_digits_is_refused(length: str, status: int) -> None:
    response = post(sync_bridge(), b"{}", {"Content-Length": length})
    assert response.status == status, response.body


def test_media_type_parameters_are_parsed_not_matched() -> None:
    typed = {"Content-Type": 'application/json; charset="UTF-8"; foo=bar'}
    response = post(sync_bridge(), report_body(deviceId="x"), typed)
    assert response.status == 422, response.body  # past the media type check
    latin = post(
        sync_bridge(), b"{}", {"Content-Type": "application/json; foo=bar; charset=latin-1"}
    )
    assert latin.status == 415


def test_a_422_lists_a_bounded_number_of_errors_and_never_echoes_long_names() -> None:
    body = report_body(**{f"k{i}" + "x" * 5000: i for i in range(40)})
    response = post(sync_bridge(), body)
    assert response.status == 422
    assert len(response.body["errors"]) <= envelope.MAX_LISTED_ERRORS
    assert len(response.body_bytes()) < 16 * 1024
    assert "40" in response.body["detail"] or "41" in response.body["detail"]


def test_an_object_with_too_many_keys_is_refused_and_the_duplicate_check_is_linear() -> None:
    class Counted(str):
        calls = 0

        def __eq__(self, other: object) -> bool:
            Counted.calls += 1
            return str.__eq__(self, other)

        __hash__ = str.__hash__

    keys = [Counted(f"k{i}") for i in range(3000)] + [Counted("k2999")]
    with pytest.raises(ValueError, match="duplicate"):
        reject_duplicates([(k, 0) for k in keys])
    assert Counted.calls <= 10 * len(keys)
    wide = b"{" + b",".join(b'"k%d":0' % i for i in range(envelope.MAX_OBJECT_KEYS + 1)) + b"}"
    response = post(sync_bridge(), wide)
    assert response.status == 400
    assert "keys" in response.body["detail"]


def test_unauthenticated_callers_get_no_json_diagnostics() -> None:
    bridge = sync_bridge(
        BRIDGE_AUTH_MODE="certificate", BRIDGE_TRUSTED_CA_CERTS=trusted().bundle_pem
    )
    response = post(bridge, b'{"deviceId": ')
    assert response.status == 401
    assert slug(response) == "certificate-missing"
    keys = b"{" + b",".join(b'"k%d":0' % i for i in range(60_000)) + b',"k1":0}'
    assert post(bridge, keys).status == 401


def test_a_function_key_in_the_query_string_is_refused_naming_the_header() -> None:
    response = post(sync_bridge(), report_body(), query={"code": "k3y"})
    assert response.status == 401
    assert "x-functions-key" in response.body["detail"]
    assert "k3y" not in response.body_bytes().decode()


# --- certificates that do not parse -------------------------------------------------------------


def _mutated(old: str, new: str) -> str:
    import base64

    der = base64.b64decode(header(trusted().leaf(DEVICE)))
    at = der.find(bytes.fromhex(old))
    assert at > 0
    return base64.b64encode(der[:at] + bytes.fromhex(new) + der[at + len(new) // 2 :]).decode()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param("a003020102", "a003020105", id="version-v6"),
        pytest.param("0603551d13", "0603551d0f", id="duplicated-extension"),
    ],
)
def test_a_certificate_whose_der_does_not_parse_is_certificate_malformed(
    old: str, new: str
) -> None:
    bridge = sync_bridge(
        BRIDGE_AUTH_MODE="certificate", BRIDGE_TRUSTED_CA_CERTS=trusted().bundle_pem
    )
    response = post(bridge, report_body(), {"X-ARR-ClientCert": _mutated(old, new)})
    assert response.status == 401, response.body
    assert slug(response) == "certificate-malformed"


# --- settings an unused mode needs ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["function", "certificate"])
def test_an_unresolved_key_vault_reference_is_ignored_when_hmac_is_off(mode: str) -> None:
    bridge = sync_bridge(
        BRIDGE_AUTH_MODE=mode,
        BRIDGE_TRUSTED_CA_CERTS=trusted().bundle_pem,
        BRIDGE_HMAC_SECRETS=KEY_VAULT_REFERENCE,
    )
    headers = {"X-ARR-ClientCert": header(trusted().leaf(DEVICE))}
    assert post(bridge, report_body(deviceId="x"), headers).status == 422


def test_hmac_mode_names_an_unresolved_key_vault_reference() -> None:
    with pytest.raises(SettingsError, match="unresolved Key Vault reference") as caught:
        Settings.from_env(
            {
                "BRIDGE_DELIVERY_MODE": "sync",
                "AzureWebJobsStorage": UNREACHABLE_STORAGE,
                "BRIDGE_AUTH_MODE": "hmac",
                "BRIDGE_HMAC_SECRETS": KEY_VAULT_REFERENCE,
            }
        )
    assert "BRIDGE_HMAC_SECRETS" in str(caught.value)


@pytest.fixture
def broken_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("BRIDGE_DELIVERY_MODE", "sync")
    monkeypatch.setenv("AzureWebJobsStorage", UNREACHABLE_STORAGE)
    monkeypatch.setenv("BRIDGE_SCRIPT_INTERVAL", "s3cr3t-looking-value")
    monkeypatch.setattr(runtime, "_bridge", None)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_health_names_invalid_settings_but_never_their_values(broken_settings: None) -> None:
    response = api.health()
    assert response.status == 503
    text = response.body_bytes().decode()
    assert "BRIDGE_SCRIPT_INTERVAL" in text
    assert "s3cr3t" not in text


# --- the last resort ------------------------------------------------------------------------------


def test_an_unexpected_fault_is_a_planned_problem_with_an_error_event(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(mapping, "map_report", broken)  # ingest imports it with the first report
    response = post(sync_bridge(), report_body())
    assert response.status == 500
    assert response.content_type == api.PROBLEM_JSON
    assert slug(response) == "internal-error"
    events = [getattr(r, "microsoft.custom_event.name", None) for r in caplog.records]
    assert "error" in events


def test_script_id_and_device_are_checked_before_anything_is_stored() -> None:
    bridge = sync_bridge(BRIDGE_ALLOWED_SCRIPT_IDS="0f8fad5b-d9cb-469f-a165-70867728950e")
    assert post(bridge, report_body()).status == 403
    assert SCRIPT not in bridge.settings.allowed_script_ids


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The process-wide settings, read afresh from the environment this test sets."""
    monkeypatch.setenv("BRIDGE_DELIVERY_MODE", "sync")
    monkeypatch.setenv("AzureWebJobsStorage", UNREACHABLE_STORAGE)
    monkeypatch.setattr(runtime, "_bridge", None)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("mode", "status"), [("function", 200), ("certificate", 200), ("hmac", 503)]
)
def test_health_with_an_unresolved_key_vault_reference_depends_on_the_mode(
    environment: pytest.MonkeyPatch, mode: str, status: int
) -> None:
    environment.setenv("BRIDGE_AUTH_MODE", mode)
    environment.setenv("BRIDGE_TRUSTED_CA_CERTS", trusted().bundle_pem)
    environment.setenv("BRIDGE_HMAC_SECRETS", KEY_VAULT_REFERENCE)
    response = api.health()
    assert response.status == status, response.body
    if status == 503:
        assert "BRIDGE_HMAC_SECRETS" in response.body["detail"]
        assert "kv-bridge" not in response.body_bytes().decode()


def test_a_certificate_bundle_is_not_read_when_certificate_mode_is_off() -> None:
    settings = Settings.from_env(
        {
            "BRIDGE_DELIVERY_MODE": "sync",
            "AzureWebJobsStorage": UNREACHABLE_STORAGE,
            "BRIDGE_TRUSTED_CA_CERTS": "/no/such/bundle.pem",
        }
    )
    assert settings.trusted_ca_certs == ()
    with pytest.raises(SettingsError, match="BRIDGE_TRUSTED_CA_CERTS"):
        Settings.from_env(
            {
                "BRIDGE_DELIVERY_MODE": "sync",
                "AzureWebJobsStorage": UNREACHABLE_STORAGE,
                "BRIDGE_AUTH_MODE": "certificate",
                "BRIDGE_TRUSTED_CA_CERTS": "/no/such/bundle.pem",
            }
        )
