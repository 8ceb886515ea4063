"""Settings: every default from DESIGN.md, the four clouds, and loud failures for bad values."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shared.settings import Cloud, Settings, SettingsError, parse_duration
from tests.certs import trusted

# Queue mode (the default) needs storage; these tests are about other settings.
STORAGE = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def load(**values: str) -> Settings:
    return Settings.from_env({**STORAGE, **values})


# Each app setting's value while it is unset, as DESIGN.md documents it...
DESIGN_DEFAULTS: dict[str, object] = {
    "GRAPH_BASE_URL": None,  # derived from the cloud: asserted in the test
    "BRIDGE_MAX_BODY_BYTES": 2 * 1024 * 1024,
    "BRIDGE_MAX_OUTPUT_CHARS": 1_048_576,
    "BRIDGE_SCRIPT_INTERVAL": timedelta(hours=8),
    "BRIDGE_CLOCK_SKEW": timedelta(minutes=5),
    "BRIDGE_RUN_STATE_ID_TEMPLATE": "{scriptId}:{deviceId}",
    "BRIDGE_ALLOWED_SCRIPT_IDS": frozenset(),  # optional: every script is allowed
    "BRIDGE_DESTINATIONS": ("graph",),
    "BRIDGE_LOGS_STREAM": "Custom-IntuneComplianceScriptState_CL",
    "BRIDGE_REFRESH_INTERVAL": timedelta(hours=8),
    "BRIDGE_AUTH_MODE": frozenset({"function"}),
    "BRIDGE_GRAPH_WRITES_PER_SECOND": 8,
}
# ...and where DESIGN.md is silent, as the README's settings table does.
README_DEFAULTS: dict[str, object] = {
    "BRIDGE_GRAPH_CLOUD": Cloud.GLOBAL,
    "AZURE_CLIENT_ID": None,  # the system-assigned identity
    "BRIDGE_CREDENTIAL": "managed_identity",
    "BRIDGE_DELIVERY_MODE": "queue",
    "BRIDGE_RUN_STATE_LOOKUP_FALLBACK": None,
    "BRIDGE_LOGS_ENDPOINT": None,
    "BRIDGE_LOGS_RULE_ID": None,
    "BRIDGE_ENTRA_ATTRIBUTES": {},
    "BRIDGE_TENANT_ID": None,
    "BRIDGE_TRUSTED_CA_CERTS": (),
    "BRIDGE_HMAC_SECRETS": (),
    "BRIDGE_DEVICE_RATE_LIMIT": 60,
    "BRIDGE_TELEMETRY_SCRIPT_OUTPUT": False,
    "BRIDGE_GRAPH_CONNECT_TIMEOUT": 3.05,
    "BRIDGE_GRAPH_READ_TIMEOUT": 15.0,
    "BRIDGE_SYNC_ATTEMPTS": 3,
    "BRIDGE_SYNC_MAX_WAIT": timedelta(seconds=10),
    "BRIDGE_MAX_ATTEMPTS": 20,
    "BRIDGE_MAX_AGE": timedelta(hours=24),
    "BRIDGE_DELIVERY_LEASE": timedelta(seconds=60),
    "AzureWebJobsStorage": None,
    "AzureWebJobsStorage__accountName": None,
    "AzureWebJobsStorage__queueServiceUri": None,
    "AzureWebJobsStorage__tableServiceUri": None,
    "AzureWebJobsStorage__blobServiceUri": None,
    "AzureWebJobsStorage__clientId": None,  # AZURE_CLIENT_ID's identity
}


def unset_values() -> dict[str, object]:
    """Every setting, by its app-setting name, as Settings holds it while that name is unset."""
    # Settings refuses to start without storage, so AzureWebJobsStorage's own default is read
    # where identity-based storage is set instead.
    by_connection = load()
    by_identity = Settings.from_env({"AzureWebJobsStorage__accountName": "stbridge"})
    return {
        field.alias: getattr(by_identity if field.alias in STORAGE else by_connection, name)
        for name, field in Settings.model_fields.items()
    }


def test_every_setting_has_its_documented_default() -> None:
    # Compared as whole dicts: a setting added without a default here fails too.
    assert unset_values() == DESIGN_DEFAULTS | README_DEFAULTS
    s = load()
    assert s.graph_url == "https://graph.microsoft.com/beta"
    assert s.graph_scope == "https://graph.microsoft.com/.default"


@pytest.mark.parametrize(
    ("cloud", "root"),
    [
        ("Global", "https://graph.microsoft.com"),
        ("USGovL4", "https://graph.microsoft.us"),
        ("USGovL5DoD", "https://dod-graph.microsoft.us"),
        ("China", "https://microsoftgraph.chinacloudapi.cn"),
    ],
)
def test_each_national_cloud_sets_graph_root_and_token_scope(cloud: str, root: str) -> None:
    s = load(BRIDGE_GRAPH_CLOUD=cloud)
    assert s.graph_url == f"{root}/beta"
    assert s.graph_scope == f"{root}/.default"


def test_overriding_the_base_url_never_changes_the_token_audience() -> None:
    s = load(BRIDGE_GRAPH_CLOUD="USGovL4", GRAPH_BASE_URL="http://127.0.0.1:7072/beta/")
    assert s.graph_url == "http://127.0.0.1:7072/beta"
    assert s.graph_scope == "https://graph.microsoft.us/.default"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300), ("300s", 300), ("5m", 300), ("8h", 28800), ("PT8H", 28800), ("00:05:00", 300)],
)
def test_durations_accept_the_forms_admins_write(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BRIDGE_GRAPH_CLOUD", "Mars"),
        ("GRAPH_BASE_URL", "graph.microsoft.com"),
        ("BRIDGE_MAX_BODY_BYTES", "0"),
        ("BRIDGE_SCRIPT_INTERVAL", "eight hours"),
        ("BRIDGE_RUN_STATE_ID_TEMPLATE", "{deviceId}/../{scriptId}"),
        ("BRIDGE_RUN_STATE_ID_TEMPLATE", "{scriptId}"),
        ("BRIDGE_ALLOWED_SCRIPT_IDS", "not-a-guid"),
        ("BRIDGE_CREDENTIAL", "client_secret"),
        ("BRIDGE_DELIVERY_MODE", "later"),
        ("BRIDGE_AUTH_MODE", "certficate"),
        ("BRIDGE_AUTH_MODE", ","),
        ("BRIDGE_TENANT_ID", "contoso.onmicrosoft.com"),
    ],
)
def test_invalid_setting_fails_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name) as caught:
        Settings.from_env({**STORAGE, name: value})
    assert caught.value.names == (name,)


@pytest.mark.parametrize(
    ("value", "modes"),
    [
        ("", {"function"}),
        ("   ", {"function"}),
        ("Certificate", {"certificate"}),
        ("certificate, hmac", {"certificate", "hmac"}),
        ("hmac;function", {"hmac", "function"}),
    ],
)
def test_auth_modes_are_read_once_and_blank_means_function(value: str, modes: set[str]) -> None:
    extra = {
        "BRIDGE_TRUSTED_CA_CERTS": trusted().bundle_pem,
        "BRIDGE_HMAC_SECRETS": "whsec_" + "A" * 44,
    }
    assert load(BRIDGE_AUTH_MODE=value, **extra).auth_modes == modes


def test_allowed_script_ids_are_a_canonical_set() -> None:
    s = Settings.from_env(
        {
            **STORAGE,
            "BRIDGE_ALLOWED_SCRIPT_IDS": "3C9E7A1D-5B2F-4E8C-A6D4-1F0B9E8C7A25, "
            "0f8fad5b-d9cb-469f-a165-70867728950e",
        }
    )
    assert s.allowed_script_ids == {
        "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25",
        "0f8fad5b-d9cb-469f-a165-70867728950e",
    }


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_empty_values_mean_unset(blank: str) -> None:
    every_other = {field.alias for field in Settings.model_fields.values()} - set(STORAGE)
    assert load(**dict.fromkeys(every_other, blank)).model_dump() == load().model_dump()
    s = load(AZURE_CLIENT_ID=blank, GRAPH_BASE_URL=blank)
    assert s.azure_client_id is None
    assert s.graph_base_url is None
    assert s.graph_url == "https://graph.microsoft.com/beta"
    with pytest.raises(SettingsError, match="the bridge needs AzureWebJobsStorage"):
        Settings.from_env({"AzureWebJobsStorage": blank})


def test_both_modes_need_storage() -> None:
    for mode in ("queue", "sync"):
        with pytest.raises(SettingsError, match="AzureWebJobsStorage"):
            Settings.from_env({"BRIDGE_DELIVERY_MODE": mode})
    assert load(BRIDGE_DELIVERY_MODE="sync").delivery_mode == "sync"
    assert load().delivery_mode == "queue"
    identity_based = Settings.from_env({"AzureWebJobsStorage__accountName": "stbridge"})
    assert identity_based.storage_connection is None


@pytest.mark.parametrize(
    ("mode", "lease", "ok"),
    [
        ("queue", "21s", False),  # 3.05 + 15 + the 3 s budget wait = 21.05 s
        ("queue", "22s", True),
        ("sync", "28s", False),  # sync waits up to BRIDGE_SYNC_MAX_WAIT (10 s) for budget
        ("sync", "29s", True),
    ],
)
def test_the_lease_must_outlast_one_write(mode: str, lease: str, ok: bool) -> None:
    values = {"BRIDGE_DELIVERY_MODE": mode, "BRIDGE_DELIVERY_LEASE": lease}
    if ok:
        assert load(**values).delivery_lease.total_seconds() == float(lease[:-1])
    else:
        with pytest.raises(SettingsError, match="BRIDGE_DELIVERY_LEASE must outlast one write"):
            load(**values)


def test_destination_settings_are_required_only_with_their_destination() -> None:
    assert load().destinations == ("graph",)
    with pytest.raises(SettingsError, match="BRIDGE_LOGS_ENDPOINT, BRIDGE_LOGS_RULE_ID"):
        load(BRIDGE_DESTINATIONS="graph,logs")
    with pytest.raises(SettingsError, match="BRIDGE_ENTRA_ATTRIBUTES"):
        load(BRIDGE_DESTINATIONS="entra")
    with pytest.raises(SettingsError, match="must list one or more of graph, logs, entra"):
        load(BRIDGE_DESTINATIONS="graph,teams")
    settings = load(
        BRIDGE_DESTINATIONS="logs, entra",
        BRIDGE_LOGS_ENDPOINT="https://dcr-x.westeurope-1.ingest.monitor.azure.com/",
        BRIDGE_LOGS_RULE_ID="dcr-" + "a" * 32,
        BRIDGE_ENTRA_ATTRIBUTES="3C9E7A1D-5B2F-4E8C-A6D4-1F0B9E8C7A25=15",
        BRIDGE_GRAPH_CLOUD="USGovL4",
    )
    assert settings.destinations == ("logs", "entra")
    assert settings.logs_endpoint == "https://dcr-x.westeurope-1.ingest.monitor.azure.com"
    assert settings.entra_attributes == {"3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25": 15}
    assert settings.monitor_scope == "https://monitor.azure.us/.default"
    assert settings.graph_v1_url == "https://graph.microsoft.us/v1.0"
    for bad in (
        "x=1",
        "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25=16",
        "3c9e7a1d-5b2f-4e8c-a6d4-1f0b9e8c7a25",
    ):
        with pytest.raises(SettingsError, match="BRIDGE_ENTRA_ATTRIBUTES"):
            load(BRIDGE_DESTINATIONS="entra", BRIDGE_ENTRA_ATTRIBUTES=bad)
    with pytest.raises(SettingsError, match="BRIDGE_LOGS_RULE_ID"):
        load(BRIDGE_LOGS_RULE_ID="not-a-dcr")
