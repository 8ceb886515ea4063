"""The bridge's settings: one typed object read from the same names as the Azure app settings."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.ids import canonical_guid
from shared.proofs import (
    BRIDGE_PROOFS,
    DEFAULT_AUTH_MODES,
    load_ca_bundle,
    parse_auth_modes,
    parse_hmac_secrets,
)

__all__ = [
    "CLOUDS",
    "DESTINATIONS",
    "LOOKUP",
    "QUEUES",
    "Cloud",
    "Settings",
    "SettingsError",
    "get_settings",
    "parse_duration",
]


class Cloud(StrEnum):
    GLOBAL = "Global"
    US_GOV_L4 = "USGovL4"
    US_GOV_L5_DOD = "USGovL5DoD"
    CHINA = "China"


# The Graph root decides the token audience. GRAPH_BASE_URL may point elsewhere (an emulator) but
# the audience always follows the cloud, so no token is ever minted for the wrong cloud.
MONITOR_AUDIENCES: dict[Cloud, str] = {
    Cloud.GLOBAL: "https://monitor.azure.com",
    Cloud.US_GOV_L4: "https://monitor.azure.us",
    Cloud.US_GOV_L5_DOD: "https://monitor.azure.us",
    Cloud.CHINA: "https://monitor.azure.cn",
}
CLOUDS: dict[Cloud, str] = {
    Cloud.GLOBAL: "https://graph.microsoft.com",
    Cloud.US_GOV_L4: "https://graph.microsoft.us",
    Cloud.US_GOV_L5_DOD: "https://dod-graph.microsoft.us",
    Cloud.CHINA: "https://microsoftgraph.chinacloudapi.cn",
}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_TIMEDELTA = TypeAdapter(timedelta)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_TEMPLATE_LITERALS = re.compile(r"[A-Za-z0-9:_.-]*")
# A data collection rule's immutable id, and a DCR stream of a custom table.
_LOGS_NAMES = {
    "logs_rule_id": (re.compile(r"dcr-[0-9a-f]{32}"), "dcr- and 32 hex digits (the immutable id)"),
    "logs_stream": (re.compile(r"Custom-[A-Za-z0-9_]{1,60}_CL"), "Custom-<table>_CL"),
}
DESTINATIONS = ("graph", "logs", "entra")
# Each destination's queue (the Bicep declares each of them and its `-poison` queue).
QUEUES = {"graph": "compliance-results", "logs": "compliance-logs", "entra": "compliance-entra"}
# How long one queue execution may sleep for its write slot before it hands the message back.
BUDGET_WAIT_SECONDS = 3.0
# The lookup strategy lists deviceRunStates by device instead of building the id.
LOOKUP = "lookup"


def parse_duration(value: Any) -> timedelta:
    """Accept what administrators write in app settings: `8h`, `300`, `5m`, `PT8H`, `00:05:00`.

    The short forms are ours; ISO 8601 and `HH:MM:SS` are pydantic's own timedelta parsing.
    """
    if isinstance(value, timedelta | int | float):
        return value if isinstance(value, timedelta) else timedelta(seconds=value)
    text = str(value).strip()
    if m := _DURATION.match(text):
        return timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "s").lower()])
    try:
        return _TIMEDELTA.validate_python(text)
    except ValidationError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 8h, 5m, 300s or PT8H)") from None


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _check_template(value: str) -> str:
    """The result enters a Graph URL: only known placeholders and URL-safe literals are allowed."""
    literals = value.replace("{scriptId}", "").replace("{deviceId}", "")
    if "{deviceId}" not in value or not _TEMPLATE_LITERALS.fullmatch(literals):
        raise ValueError("needs {deviceId}, may use {scriptId}, otherwise only A-Z a-z 0-9 : _ . -")
    return value


def _entra_attributes(value: Any) -> Any:
    """`<scriptId>=<1..15>` pairs: which extensionAttribute carries which script's state."""
    if not isinstance(value, str):
        return value
    mapping: dict[str, int] = {}
    for item in _split_list(value):
        script, sep, number = item.partition("=")
        if not sep or not number.strip().isdigit() or not 1 <= int(number) <= 15:
            raise ValueError("each entry must be <scriptId>=<1..15>, e.g. 3c9e...=1")
        script = canonical_guid(script.strip())
        if script in mapping:
            raise ValueError(f"script {script} is mapped twice")
        mapping[script] = int(number)
    return mapping


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in re.split(r"[,;\s]+", value) if item.strip()]
    return value


class SettingsError(ValueError):
    """A setting is invalid; the message names each one (`names`: the names alone, no values)."""

    def __init__(self, message: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.names = names


class Settings(BaseModel):
    """Each alias is an app-setting name; the README table and infra are checked against them."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    graph_cloud: Cloud = Field(Cloud.GLOBAL, alias="BRIDGE_GRAPH_CLOUD")
    graph_base_url: str | None = Field(None, alias="GRAPH_BASE_URL")
    azure_client_id: str | None = Field(None, alias="AZURE_CLIENT_ID")
    credential_kind: str = Field("managed_identity", alias="BRIDGE_CREDENTIAL")
    delivery_mode: str = Field("queue", alias="BRIDGE_DELIVERY_MODE")
    max_body_bytes: int = Field(2 * 1024 * 1024, alias="BRIDGE_MAX_BODY_BYTES", gt=0)
    max_output_chars: int = Field(1_048_576, alias="BRIDGE_MAX_OUTPUT_CHARS", ge=64)
    script_interval: Duration = Field(timedelta(hours=8), alias="BRIDGE_SCRIPT_INTERVAL")
    clock_skew: Duration = Field(timedelta(minutes=5), alias="BRIDGE_CLOCK_SKEW")
    run_state_id_template: str = Field(
        "{scriptId}:{deviceId}", alias="BRIDGE_RUN_STATE_ID_TEMPLATE"
    )
    # With `lookup`: when the list names no run state for the device, write the template's id.
    run_state_lookup_fallback: str | None = Field(None, alias="BRIDGE_RUN_STATE_LOOKUP_FALLBACK")
    destinations: Annotated[tuple[str, ...], BeforeValidator(_split_list)] = Field(
        ("graph",), alias="BRIDGE_DESTINATIONS"
    )
    logs_endpoint: str | None = Field(None, alias="BRIDGE_LOGS_ENDPOINT")
    logs_rule_id: str | None = Field(None, alias="BRIDGE_LOGS_RULE_ID")
    logs_stream: str = Field("Custom-IntuneComplianceScriptState_CL", alias="BRIDGE_LOGS_STREAM")
    entra_attributes: Annotated[dict[str, int], BeforeValidator(_entra_attributes)] = Field(
        default_factory=dict, alias="BRIDGE_ENTRA_ATTRIBUTES"
    )
    # An unchanged state is rewritten to graph/entra only this often; logs get every report.
    refresh_interval: Duration = Field(timedelta(hours=8), alias="BRIDGE_REFRESH_INTERVAL")
    # When set, a device certificate of another tenant is refused.
    tenant_id: str | None = Field(None, alias="BRIDGE_TENANT_ID")
    allowed_script_ids: Annotated[frozenset[str], BeforeValidator(_split_list)] = Field(
        frozenset(), alias="BRIDGE_ALLOWED_SCRIPT_IDS"
    )
    # Device authentication (docs/authentication.md): every listed mode must pass.
    auth_modes: Annotated[frozenset[str], BeforeValidator(parse_auth_modes)] = Field(
        DEFAULT_AUTH_MODES, alias="BRIDGE_AUTH_MODE"
    )
    # Read only when their mode is on: an unused mode's setting never takes the bridge down.
    trusted_ca_certs: tuple[bytes, ...] = Field(
        (), alias="BRIDGE_TRUSTED_CA_CERTS", repr=False, validate_default=True
    )
    hmac_secrets: tuple[SecretStr, ...] = Field(
        (), alias="BRIDGE_HMAC_SECRETS", repr=False, validate_default=True
    )
    device_rate_limit: int = Field(60, alias="BRIDGE_DEVICE_RATE_LIMIT", ge=0)
    # Telemetry: script output reaches Application Insights only when this opts in.
    telemetry_script_output: bool = Field(False, alias="BRIDGE_TELEMETRY_SCRIPT_OUTPUT")
    graph_connect_timeout: float = Field(3.05, alias="BRIDGE_GRAPH_CONNECT_TIMEOUT", gt=0)
    graph_read_timeout: float = Field(15.0, alias="BRIDGE_GRAPH_READ_TIMEOUT", gt=0)
    sync_attempts: int = Field(3, alias="BRIDGE_SYNC_ATTEMPTS", ge=1, le=10)
    sync_max_wait: Duration = Field(timedelta(seconds=10), alias="BRIDGE_SYNC_MAX_WAIT")
    # Across all instances; Intune allows 200 writes per 20 s per app, so at most 10.
    graph_writes_per_second: float = Field(8.0, alias="BRIDGE_GRAPH_WRITES_PER_SECOND", gt=0, le=10)
    max_attempts: int = Field(20, alias="BRIDGE_MAX_ATTEMPTS", ge=1)
    max_age: Duration = Field(timedelta(hours=24), alias="BRIDGE_MAX_AGE")
    delivery_lease: Duration = Field(timedelta(seconds=60), alias="BRIDGE_DELIVERY_LEASE")
    # Host storage, as the Functions host reads it: a connection string (Azurite locally), or
    # identity-based service URIs with the managed identity in Azure (no shared keys).
    storage_connection: SecretStr | None = Field(None, alias="AzureWebJobsStorage")
    storage_account: str | None = Field(None, alias="AzureWebJobsStorage__accountName")
    storage_queue_uri: str | None = Field(None, alias="AzureWebJobsStorage__queueServiceUri")
    storage_table_uri: str | None = Field(None, alias="AzureWebJobsStorage__tableServiceUri")
    storage_blob_uri: str | None = Field(None, alias="AzureWebJobsStorage__blobServiceUri")
    storage_client_id: str | None = Field(None, alias="AzureWebJobsStorage__clientId")

    @field_validator("credential_kind")
    @classmethod
    def _credential_kind(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in {"managed_identity", "default"}:
            raise ValueError("must be managed_identity or default")
        return value

    @field_validator("delivery_mode")
    @classmethod
    def _delivery_mode(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in {"queue", "sync"}:
            raise ValueError("must be queue or sync")
        return value

    @model_validator(mode="after")
    def _storage(self) -> Settings:
        # Both modes keep the run-state table, the queues and the budget row in storage.
        if not (
            self.storage_connection
            or self.storage_account
            or (self.storage_queue_uri and self.storage_table_uri and self.storage_blob_uri)
        ):
            raise ValueError(
                "the bridge needs AzureWebJobsStorage (a connection string) or "
                "AzureWebJobsStorage__accountName / __queueServiceUri, __tableServiceUri, "
                "__blobServiceUri"
            )
        return self

    @field_validator("destinations")
    @classmethod
    def _destinations(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(item.lower() for item in value))
        if not names or not set(names) <= set(DESTINATIONS):
            raise ValueError(f"must list one or more of {', '.join(DESTINATIONS)}")
        return names

    @field_validator("logs_rule_id", "logs_stream")
    @classmethod
    def _logs_names(cls, value: str | None, info: ValidationInfo) -> str | None:
        pattern, form = _LOGS_NAMES[str(info.field_name)]
        if value is not None and not pattern.fullmatch(value.strip()):
            raise ValueError(f"must be {form}")
        return value.strip() if value else None

    @field_validator("logs_endpoint")
    @classmethod
    def _logs_endpoint(cls, value: str | None) -> str | None:
        if value and not re.match(r"^https?://[^\s/?#]+/?$", value.strip()):
            raise ValueError("must be the rule's logs ingestion endpoint (https://host)")
        return value.strip().rstrip("/") if value else None

    @field_validator("tenant_id", "run_state_lookup_fallback")
    @classmethod
    def _optional_guid_or_template(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        if info.field_name == "tenant_id":
            return canonical_guid(value.strip())
        return _check_template(value.strip())

    @model_validator(mode="after")
    def _lease_outlasts_a_write(self) -> Settings:
        # A write that lands after its lease ran out could overwrite a newer one written since.
        wait = BUDGET_WAIT_SECONDS
        if self.delivery_mode == "sync":
            wait = max(wait, self.sync_max_wait.total_seconds())
        need = self.graph_connect_timeout + self.graph_read_timeout + wait
        if self.delivery_lease.total_seconds() <= need:
            raise ValueError(
                f"BRIDGE_DELIVERY_LEASE must outlast one write: more than {need:g} s "
                "(Graph connect + read timeout + the longest wait for write budget)"
            )
        return self

    @model_validator(mode="after")
    def _destination_settings(self) -> Settings:
        needed = {
            "BRIDGE_LOGS_ENDPOINT": ("logs", self.logs_endpoint),
            "BRIDGE_LOGS_RULE_ID": ("logs", self.logs_rule_id),
            "BRIDGE_ENTRA_ATTRIBUTES": ("entra", self.entra_attributes),
        }
        missing = [n for n, (d, value) in needed.items() if d in self.destinations and not value]
        if missing:
            raise ValueError(f"{', '.join(missing)} required by BRIDGE_DESTINATIONS")
        return self

    @field_validator("graph_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not re.match(r"^https?://[^\s/?#]+(/[^\s?#]*)?$", value):
            raise ValueError(
                "must be an absolute http(s) URL such as https://graph.microsoft.com/beta"
            )
        return value.rstrip("/")

    @field_validator("azure_client_id")
    @classmethod
    def _client_id(cls, value: str | None) -> str | None:
        return value.strip() or None if value else None

    @field_validator("run_state_id_template")
    @classmethod
    def _template(cls, value: str) -> str:
        return value if value == LOOKUP else _check_template(value)

    @field_validator("allowed_script_ids")
    @classmethod
    def _script_ids(cls, value: frozenset[str]) -> frozenset[str]:
        return frozenset(canonical_guid(item) for item in value)

    @field_validator("trusted_ca_certs", "hmac_secrets", mode="before")
    @classmethod
    def _proof_setting(cls, value: Any, info: ValidationInfo) -> Any:
        mode = "certificate" if info.field_name == "trusted_ca_certs" else "hmac"
        if mode not in info.data.get("auth_modes", ()):
            return ()
        if mode == "hmac":
            return parse_hmac_secrets(value)
        return load_ca_bundle(value) if isinstance(value, str) else value

    @field_validator("trusted_ca_certs", "hmac_secrets")
    @classmethod
    def _required_by_mode(cls, value: tuple[Any, ...], info: ValidationInfo) -> tuple[Any, ...]:
        mode = "certificate" if info.field_name == "trusted_ca_certs" else "hmac"
        if not value and mode in info.data.get("auth_modes", ()):
            name = cls.model_fields[str(info.field_name)].alias
            raise ValueError(f"{name} is required when BRIDGE_AUTH_MODE includes {mode}")
        return value

    @classmethod
    def ingest_needs_function_key(cls, environ: Mapping[str, str] | None = None) -> bool:
        """Keys on ingest unless only bridge proofs are listed; blank or unparsable: keys on."""
        env = os.environ if environ is None else environ
        value = env.get("BRIDGE_AUTH_MODE", "")
        try:
            modes = parse_auth_modes(value) if value.strip() else DEFAULT_AUTH_MODES
        except ValueError:
            return True
        return "function" in modes or not modes & BRIDGE_PROOFS

    @property
    def graph_root(self) -> str:
        return CLOUDS[self.graph_cloud]

    @property
    def graph_scope(self) -> str:
        return f"{self.graph_root}/.default"

    @property
    def graph_url(self) -> str:
        """Base URL including the version segment; defaults to the cloud's beta endpoint."""
        return self.graph_base_url or f"{self.graph_root}/beta"

    @property
    def graph_v1_url(self) -> str:
        """The same root with the version segment replaced by v1.0 (Entra devices live there)."""
        root, _, _version = self.graph_url.rpartition("/")
        return f"{root}/v1.0"

    @property
    def monitor_scope(self) -> str:
        return f"{MONITOR_AUDIENCES[self.graph_cloud]}/.default"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        names = {field.alias for field in cls.model_fields.values() if field.alias}
        values = {name: env[name] for name in names if env.get(name, "").strip() != ""}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
            names = tuple(".".join(str(p) for p in err["loc"]) or "settings" for err in errors)
            problems = "; ".join(
                f"{name}: {err['msg'].removeprefix('Value error, ')}"
                for name, err in zip(names, errors, strict=True)
            )
            raise SettingsError(f"invalid settings: {problems}", names) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read once per process; the platform restarts the worker when app settings change."""
    return Settings.from_env()
