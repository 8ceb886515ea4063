"""The infra as a deployment would see it, without the Bicep CLI (it cannot be installed here).

tree-sitter-bicep proves every .bicep file is well-formed; tests/bicep_types.py reads each file
and evaluates its expressions the way ARM would for given parameter values
(tests/test_infra_types.py checks the resource bodies against their type definitions). So the
assertions here are about what a deployment produces in each mode: the app settings (checked
against shared.settings.Settings, which also validates them), the site's certificate settings, the
queues, table and containers, and every role assignment with its scope. What only needs a name is
asserted on the source's structure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tree_sitter
import tree_sitter_bicep

from shared.settings import DESTINATIONS, Cloud, Settings
from tests.bicep_types import Template, Unresolved, evaluate, properties
from tests.certs import trusted

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
APP = INFRA / "app"
QUERIES = INFRA / "queries"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
KQL_FILES = sorted(QUERIES.glob("*.kql"))
TESTED_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"

# Settings Flex Consumption rejects or that belong to the older plans (reference doc).
FLEX_FORBIDDEN = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "AzureWebJobsFeatureFlags",
}

# Settings the code reads that the infra deliberately does not set, each with its reason.
NOT_DEPLOYED = {
    "GRAPH_BASE_URL": "local emulators only; in Azure the Graph root follows BRIDGE_GRAPH_CLOUD",
    "AzureWebJobsStorage": "a connection string (Azurite locally) would carry an account key; "
    "Azure gets the identity-based AzureWebJobsStorage__* settings",
    "AzureWebJobsStorage__accountName": "the code accepts it or the three service URIs; the "
    "infra sets the URIs (explicit endpoints, as the azd templates do)",
    "IDENTITY_ENDPOINT": "set by the platform on every Functions instance",
    "IDENTITY_HEADER": "set by the platform on every Functions instance",
}

# Built-in role definitions (the same GUID in every tenant; checked against Microsoft's
# built-in roles list with the search tool).
ROLE_GUIDS = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Queue Data Reader": "19e7f393-937e-4f77-808e-94535e297925",
    "Storage Queue Data Message Sender": "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a",
    "Storage Queue Data Message Processor": "8a0f0c08-91a1-4084-bc3d-661d67233fed",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Storage Table Data Reader": "76199698-9eea-4c19-bc75-cec21354c6b6",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
}
# Graph application roles by value (Microsoft Graph permissions reference).
GRAPH_APP_ROLES = {
    "DeviceManagementConfiguration.ReadWrite.All": "9241abd9-d0e6-425a-bd4f-47ba86e767a4",
    "Device.ReadWrite.All": "1138cb37-bd11-4084-a2b7-9f71582aeddb",
}
# The bridge's storage contract (DESIGN "Delivery", shared/store.py).
DESTINATION_QUEUES = {
    "graph": "compliance-results",
    "logs": "compliance-logs",
    "entra": "compliance-entra",
}
STRICT_LINTER_RULES = [
    "use-resource-id-functions",
    "use-secure-value-for-secure-inputs",
    "outputs-should-not-contain-secrets",
    "no-unused-params",
    "no-unused-vars",
]
AZD_OUTPUTS = {
    "AZURE_LOCATION",
    "AZURE_TENANT_ID",
    "AZURE_RESOURCE_GROUP",
    "AZURE_FUNCTION_APP_NAME",
    "SERVICE_API_NAME",
}
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
PRINCIPAL = "99999999-8888-7777-6666-555555555555"
OPERATOR = "12345678-1234-1234-1234-123456789abc"
RULE_ID = "dcr-0123456789abcdef0123456789abcdef"
LOGS_ENDPOINT = "https://dcr-bridge-abcd.swedencentral-1.ingest.monitor.azure.com"
SECRET_URI = "https://kv-x.vault.azure.net/secrets/bridge-hmac-secrets"
HMAC_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SCRIPT = "3c9e8f4a-1b2c-4d5e-8f90-123456789abc"
# What only a deployment knows, by the expression's text.
EXTERNALS = {
    "tenant().tenantId": TENANT,
    "resourceToken": "tok",
    "deploymentContainerName": "app-package-func-api-tok-1234567",
    "identity.outputs.principalId": PRINCIPAL,
    "identity.outputs.clientId": CLIENT_ID,
    "identity.outputs.resourceId": "/subscriptions/s/resourceGroups/rg/providers/id",
    "storage.outputs.name": "stbridge",
    "monitoring.outputs.applicationInsightsName": "appi-bridge",
    "monitoring.outputs.logAnalyticsName": "log-bridge",
    "keyVault.outputs.name": "kv-bridge",
    "keyVault.outputs.hmacSecretUri": SECRET_URI,
    "logsIngestion.outputs.ruleName": "dcr-bridge",
    "logsIngestion.outputs.immutableId": RULE_ID,
    "logsIngestion.outputs.logsIngestionEndpoint": LOGS_ENDPOINT,
    "storage.properties.primaryEndpoints.blob": "https://stbridge.blob.core.windows.net/",
    "storage.properties.primaryEndpoints.queue": "https://stbridge.queue.core.windows.net/",
    "storage.properties.primaryEndpoints.table": "https://stbridge.table.core.windows.net/",
    "applicationInsights.properties.ConnectionString": "InstrumentationKey=k;IngestionEndpoint=x",
}

_EXTENSION_LINE = re.compile(rb"^extension\s+\w+[^\n]*$", re.MULTILINE)
_LANGUAGE = tree_sitter.Language(tree_sitter_bicep.language())


# --- helpers ------------------------------------------------------------------------------------


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def without_comments(source: str) -> str:
    """Drop `//` comments (not the `//` inside 'https://...' strings)."""
    return re.sub(r"(^|\s)//[^\n]*", r"\1", source)


@cache
def template(path: Path) -> Template:
    return Template(path, INFRA)


def main() -> Template:
    return template(INFRA / "main.bicep")


def declaration(tpl: Template, name: str) -> Any:
    (found,) = [d for d in tpl.resources + tpl.modules if d.name == name]
    return found


def body(tpl: Template, name: str) -> dict[str, Any]:
    """A declaration's body as a {key: node} mapping (one level)."""
    return {key: value for key, value, _ in properties(tpl, declaration(tpl, name).body)}


def static(tpl: Template, node: Any) -> Any:
    """A value that needs no parameter (literals, objects and arrays of literals)."""
    return evaluate(tpl, node, {})


def condition(tpl: Template, name: str) -> Any:
    """The `if (...)` of a declaration, or None."""
    node = declaration(tpl, name).node
    conditions = [c for c in node.named_children if c.type == "if_statement"]
    loops = [c for c in node.named_children if c.type == "for_statement"]
    for loop in loops:
        conditions += [c for c in loop.named_children if c.type == "if_statement"]
    return conditions[0].named_children[0] if conditions else None


def decorator(tpl: Template, param: str, name: str) -> Any:
    for item in tpl.params[param].decorators:
        call = item.named_children[0]
        if call.named_children[0].text.decode() == name:
            args = [a for a in call.named_children[1].named_children if a.type != "comment"]
            return evaluate(tpl, args[0], {}) if args else True
    return None


def syntax_problems(source: bytes) -> list[str]:
    tree = tree_sitter.Parser(_LANGUAGE).parse(source)
    problems: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            line, column = node.start_point
            kind = "missing" if node.is_missing else "error"
            snippet = (node.text or b"")[:60].decode("utf-8", "replace")
            problems.append(f"{line + 1}:{column + 1} {kind} {node.type} {snippet!r}")
        stack.extend(node.children)
    return problems


def code_setting_names() -> dict[str, str]:
    """App-setting name -> Settings field, read from the model at test time."""
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.alias or field.validation_alias
        assert isinstance(alias, str), f"Settings.{field_name} has no string alias (setting name)"
        names[alias] = field_name
    return names


# --- a deployment, evaluated --------------------------------------------------------------------


@dataclass
class Deployment:
    """What infra/main.bicep deploys for some parameter values."""

    params: dict[str, Any]

    def module_params(self, module: str) -> dict[str, Any]:
        params = body(main(), module)["params"]
        return evaluate(main(), params, self.params, EXTERNALS)

    def module_enabled(self, module: str) -> bool:
        found = condition(main(), module)
        return found is None or bool(evaluate(main(), found, self.params, EXTERNALS))

    def var(self, tpl: Template, name: str, bindings: dict[str, Any]) -> Any:
        return evaluate(tpl, tpl.vars[name].body, bindings, EXTERNALS)

    @property
    def app_settings(self) -> dict[str, str]:
        """main's bridgeSettings merged under api's host settings, as api.bicep's union does."""
        api = template(APP / "api.bicep")
        bindings = self.module_params("api")
        merged = dict(bindings["bridgeSettings"])
        merged |= self.var(api, "hostSettings", bindings)
        merged |= self.var(api, "hmacSettings", bindings)
        return merged

    def site_properties(self, *keys: str) -> dict[str, Any]:
        api = template(APP / "api.bicep")
        site = {k: v for k, v, _ in properties(api, body(api, "site")["properties"])}
        bindings = self.module_params("api")
        return {key: evaluate(api, site[key], bindings, EXTERNALS) for key in keys if key in site}

    def environment(self) -> dict[str, str]:
        """The app settings as the code sees them: the Key Vault reference resolved."""
        env = dict(self.app_settings)
        if "BRIDGE_HMAC_SECRETS" in env:
            assert env["BRIDGE_HMAC_SECRETS"] == f"@Microsoft.KeyVault(SecretUri={SECRET_URI})"
            env["BRIDGE_HMAC_SECRETS"] = HMAC_SECRET
        return env

    def instances(self, tpl: Template, name: str, bindings: dict[str, Any]) -> list[dict[str, Any]]:
        """The bindings of each copy of a (possibly looped, possibly conditional) declaration."""
        found = declaration(tpl, name)
        copies = [dict(bindings)]
        if found.loop is not None:
            params, iterated = found.loop.named_children[0], found.loop.named_children[1]
            names = [c.text.decode() for c in params.named_children] or [params.text.decode()]
            items = evaluate(tpl, iterated, bindings, EXTERNALS)
            copies = [
                {**bindings, names[0]: item, **({names[1]: i} if len(names) > 1 else {})}
                for i, item in enumerate(items)
            ]
        test = condition(tpl, name)
        return [c for c in copies if test is None or evaluate(tpl, test, c, EXTERNALS)]

    def role_assignments(self) -> set[tuple[str, str, str, str]]:
        """(who, role, scope type, scope name) for every role assignment rbac.bicep makes."""
        if not self.module_enabled("rbac"):
            return set()
        rbac = template(APP / "rbac.bicep")
        bindings = self.module_params("rbac")
        found = set()
        for resource in rbac.resources:
            if resource.type_text.split("@")[0] != "Microsoft.Authorization/roleAssignments":
                continue
            source = resource.node.text.decode()
            (role,) = set(re.findall(r"roles\['([^']+)'\]", source))
            who = "operator" if "principalId: operatorPrincipalId" in source else "app"
            for copy in self.instances(rbac, resource.name, bindings):
                scope_node = body(rbac, resource.name)["scope"]
                found.add((who, role, *self.scope_of(rbac, scope_node, copy)))
        return found

    def scope_of(self, rbac: Template, node: Any, copy: dict[str, Any]) -> tuple[str, str]:
        """The resource type and name a `scope:` points at (`symbol` or `symbol[i]`)."""
        match = re.fullmatch(r"(\w+)(?:\[(\w+)\])?", node.text.decode())
        assert match, node.text
        target = declaration(rbac, match[1])
        names = list(self.instances(rbac, target.name, copy))
        index = copy[match[2]] if match[2] else 0
        name_node = body(rbac, target.name)["name"]
        name = evaluate(rbac, name_node, names[index], EXTERNALS)
        return target.type_text.split("@")[0], name


def deployment(**params: Any) -> Deployment:
    return Deployment({"environmentName": "bridge-test", "location": "swedencentral", **params})


ALL_ON = {
    "authMode": "certificate,hmac",
    "destinations": "graph,logs,entra",
    "trustedCaCerts": "certs/intune-ca.pem",
    "entraAttributes": f"{SCRIPT}=1",
    "principalId": OPERATOR,
}


# --- 1. syntax ----------------------------------------------------------------------------------


def test_the_infra_exists_where_azd_looks_for_it() -> None:
    expected = {
        "main.bicep",
        "app/api.bicep",
        "app/storage.bicep",
        "app/monitoring.bicep",
        "app/logs.bicep",
        "app/rbac.bicep",
        "app/keyvault.bicep",
        "app/alerts.bicep",
        "app/workbook.bicep",
        "app/graph-permission.bicep",
        "app/identity.bicep",
    }
    assert {str(p.relative_to(INFRA)) for p in BICEP_FILES} == expected


@pytest.mark.parametrize("path", BICEP_FILES, ids=rel)
def test_bicep_file_has_no_syntax_errors(path: Path) -> None:
    source = path.read_bytes()
    # tree-sitter-bicep predates the `extension` keyword; that line is blanked (positions kept).
    masked = _EXTENSION_LINE.sub(lambda m: b" " * len(m.group()), source)
    assert syntax_problems(masked) == [], rel(path)


def test_only_the_graph_module_declares_an_extension() -> None:
    declaring = {p for p in BICEP_FILES if _EXTENSION_LINE.search(p.read_bytes())}
    assert declaring == {APP / "graph-permission.bicep"}


def test_syntax_check_catches_a_broken_file() -> None:
    source = (APP / "api.bicep").read_bytes()
    assert syntax_problems(source[: len(source) // 2]), "a truncated template must be flagged"
    assert syntax_problems(source.replace(b"properties: {", b"properties {", 1))


# --- 2. the app settings a deployment produces --------------------------------------------------

SCENARIOS = {
    "defaults": {},
    "function": {"authMode": "function"},
    "certificate": {"authMode": "certificate", "trustedCaCerts": "certs/intune-ca.pem"},
    "certificate,function": {
        "authMode": "certificate,function",
        "trustedCaCerts": "certs/intune-ca.pem",
    },
    "sync, graph+logs": {"deliveryMode": "sync", "destinations": "graph,logs"},
    "everything": ALL_ON,
}


def validated(dep: Deployment, tmp_path: Path) -> Settings:
    env = dep.environment()
    if env.get("BRIDGE_TRUSTED_CA_CERTS") == "certs/intune-ca.pem":
        # A path inside the deployed package; here a real bundle stands in.
        bundle = tmp_path / "intune-ca.pem"
        bundle.write_text(trusted().bundle_pem)
        env["BRIDGE_TRUSTED_CA_CERTS"] = str(bundle)
    return Settings.from_env(env)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_deployed_settings_pass_the_code_validation(scenario: str, tmp_path: Path) -> None:
    dep = deployment(**SCENARIOS[scenario])
    settings = validated(dep, tmp_path)
    modes = set(re.split(r"[,;\s]+", dep.params.get("authMode", "hmac")))
    assert settings.auth_modes == modes
    assert settings.destinations == tuple(dep.params.get("destinations", "graph").split(","))
    assert settings.delivery_mode == dep.params.get("deliveryMode", "queue")


def test_every_setting_the_code_reads_is_deployed_or_deliberately_unset() -> None:
    deployed = set(deployment(**ALL_ON).app_settings)
    missing = set(code_setting_names()) - set(NOT_DEPLOYED) - deployed
    assert not missing, f"settings the code reads but infra/ does not set: {sorted(missing)}"
    assert not set(NOT_DEPLOYED) & deployed, "a setting listed as not deployed is deployed"


def test_every_bridge_setting_deployed_is_one_the_code_reads() -> None:
    deployed = {n for n in deployment(**ALL_ON).app_settings if n.startswith("BRIDGE_")}
    unknown = deployed - set(code_setting_names())
    assert not unknown, f"misspelt or obsolete settings in infra/: {sorted(unknown)}"


@pytest.mark.parametrize("mode", ["hmac", "function", "certificate", "certificate,hmac"])
def test_the_key_vault_reference_is_set_only_in_hmac_mode(mode: str) -> None:
    settings = deployment(authMode=mode).app_settings
    if "hmac" in mode:
        assert settings["BRIDGE_HMAC_SECRETS"] == f"@Microsoft.KeyVault(SecretUri={SECRET_URI})"
    else:
        assert "BRIDGE_HMAC_SECRETS" not in settings


def test_the_secret_uri_is_versionless() -> None:
    # The app follows rotations without a redeploy.
    expected = (
        "output hmacSecretUri string = '${vault.properties.vaultUri}secrets/${hmacSecretName}'"
    )
    assert expected in text(APP / "keyvault.bicep")


@pytest.mark.parametrize(
    ("params", "tenant"),
    [
        ({"authMode": "hmac"}, ""),
        ({"authMode": "certificate"}, TENANT),
        ({"authMode": "certificate", "certificateTenantId": SCRIPT}, SCRIPT),
    ],
    ids=["hmac", "certificate", "certificate, other tenant"],
)
def test_the_tenant_check_is_set_in_certificate_mode(params: dict[str, str], tenant: str) -> None:
    assert deployment(**params).app_settings["BRIDGE_TENANT_ID"] == tenant


@pytest.mark.parametrize("destinations", ["graph", "graph,logs", "logs", "graph,entra"])
def test_logs_settings_come_from_the_rule_only_with_the_logs_destination(destinations: str) -> None:
    dep = deployment(destinations=destinations, entraAttributes=f"{SCRIPT}=2")
    settings = dep.app_settings
    on = "logs" in destinations
    assert settings["BRIDGE_LOGS_ENDPOINT"] == (LOGS_ENDPOINT if on else "")
    assert settings["BRIDGE_LOGS_RULE_ID"] == (RULE_ID if on else "")
    assert settings["BRIDGE_LOGS_STREAM"] == "Custom-IntuneComplianceScriptState_CL"
    assert dep.module_enabled("logsIngestion") is on


def test_parameters_reach_their_settings() -> None:
    settings = deployment(
        refreshInterval="0",
        entraAttributes=f"{SCRIPT}=3",
        destinations="graph, entra",
        runStateIdTemplate="lookup",
        runStateLookupFallback="{scriptId}:{deviceId}",
        graphWritesPerSecond=5,
        allowedScriptIds=[SCRIPT],
    ).app_settings
    assert settings["BRIDGE_REFRESH_INTERVAL"] == "0"
    assert settings["BRIDGE_ENTRA_ATTRIBUTES"] == f"{SCRIPT}=3"
    assert settings["BRIDGE_DESTINATIONS"] == "graph,entra"
    assert settings["BRIDGE_RUN_STATE_ID_TEMPLATE"] == "lookup"
    assert settings["BRIDGE_RUN_STATE_LOOKUP_FALLBACK"] == "{scriptId}:{deviceId}"
    assert settings["BRIDGE_GRAPH_WRITES_PER_SECOND"] == "5"
    assert settings["BRIDGE_ALLOWED_SCRIPT_IDS"] == SCRIPT


def test_defaults_of_the_new_settings() -> None:
    settings = deployment().app_settings
    assert settings["BRIDGE_DESTINATIONS"] == "graph"
    assert settings["BRIDGE_REFRESH_INTERVAL"] == "8h"
    assert settings["BRIDGE_DELIVERY_MODE"] == "queue"
    assert settings["BRIDGE_AUTH_MODE"] == "hmac"
    assert settings["BRIDGE_GRAPH_WRITES_PER_SECOND"] == "8"


def test_no_setting_flex_consumption_forbids() -> None:
    assert not FLEX_FORBIDDEN & set(deployment(**ALL_ON).app_settings)
    assert not FLEX_FORBIDDEN & set(code_setting_names()), "the code reads a setting Flex forbids"
    for path in BICEP_FILES:
        code = without_comments(text(path))
        present = sorted(name for name in FLEX_FORBIDDEN if name in code)
        assert not present, f"{rel(path)} sets {present}"


def test_host_storage_and_telemetry_are_identity_based() -> None:
    settings = deployment().app_settings
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == CLIENT_ID
    for service in ("blob", "queue", "table"):
        assert settings[f"AzureWebJobsStorage__{service}ServiceUri"].startswith("https://stbridge.")
    assert "AzureWebJobsStorage" not in settings
    assert settings["AZURE_CLIENT_ID"] == CLIENT_ID
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        f"ClientId={CLIENT_ID};Authorization=AAD"
    )
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"


# --- 3. the site --------------------------------------------------------------------------------

NOT_SENT = {"clientCertEnabled": None, "clientCertMode": None}


@pytest.mark.parametrize(
    ("params", "enforced"),
    [
        ({"authMode": "hmac"}, False),
        ({"authMode": "function"}, False),
        ({"authMode": "certificate"}, True),
        ({"authMode": "certificate,hmac"}, True),
        ({"authMode": "certificate", "certificateFront": "external"}, False),
    ],
    ids=["hmac", "function", "certificate", "certificate,hmac", "certificate behind a front"],
)
def test_client_certificate_settings_are_sent_only_in_certificate_mode(
    params: dict[str, str], enforced: bool
) -> None:
    site = deployment(**params).site_properties("clientCertEnabled", "clientCertMode")
    # null leaves a property out of the request: neither is sent unless the app checks certs.
    required = {"clientCertEnabled": True, "clientCertMode": "Required"}
    assert site == (required if enforced else NOT_SENT)


def test_no_client_certificate_exclusion_paths() -> None:
    # They force TLS renegotiation, which HTTP/2 and TLS 1.3 cannot do (POSTs over ~100 KB fail).
    assert "clientCertExclusionPaths" not in without_comments(text(APP / "api.bicep"))


def test_site_is_https_only_tls12_without_ftps_state_or_basic_auth() -> None:
    api = template(APP / "api.bicep")
    site = {k: v for k, v, _ in properties(api, body(api, "site")["properties"])}
    assert static(api, site["httpsOnly"]) is True
    config = static(api, site["siteConfig"])
    assert config == {"minTlsVersion": "1.2", "scmMinTlsVersion": "1.2", "http20Enabled": True}
    # Flex rejects ftpsState in newer regions (ARM 51021); the policies below record the intent.
    assert "ftpsState" not in without_comments(text(APP / "api.bicep"))
    policies = {
        static(api, body(api, name)["name"]): static(api, body(api, name)["properties"])
        for name in ("ftpCredentials", "scmCredentials")
    }
    assert policies == {"ftp": {"allow": False}, "scm": {"allow": False}}


def test_plan_is_flex_consumption_and_the_runtime_is_the_tested_python() -> None:
    api = template(APP / "api.bicep")
    assert static(api, body(api, "plan")["sku"]) == {"name": "FC1", "tier": "FlexConsumption"}
    config = {k: v for k, v, _ in properties(api, body(api, "site")["properties"])}
    bindings = deployment().module_params("api")
    app_config = evaluate(api, config["functionAppConfig"], bindings, EXTERNALS)
    assert app_config["runtime"] == {"name": "python", "version": TESTED_PYTHON}
    assert app_config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    assert decorator(main(), "pythonVersion", "allowed") == [TESTED_PYTHON]


def test_makefile_and_ci_use_the_runtime_python() -> None:
    makefile = text(ROOT / "Makefile")
    assert re.search(rf"^PYTHON_VERSION := {re.escape(TESTED_PYTHON)}$", makefile, re.MULTILINE)
    assert "make test" in text(ROOT / ".ci" / "run")
    # azure-functions 2.x (requirements.txt) itself requires Python 3.13 or later.
    assert re.search(r"^azure-functions>=2\.", text(ROOT / "requirements.txt"), re.MULTILINE)


def test_location_is_limited_to_flex_regions() -> None:
    allowed = decorator(main(), "location", "allowed")
    assert "swedencentral" in allowed
    assert "eastus" in allowed
    assert len(allowed) == len(set(allowed)) >= 25
    # The docs' example region is one of them.
    doc_regions = set(re.findall(r"AZURE_LOCATION (\w+)", text(ROOT / "docs" / "operations.md")))
    assert doc_regions
    assert doc_regions <= set(allowed)


@pytest.mark.parametrize(
    ("path", "param", "minimum"),
    [
        (APP / "graph-permission.bicep", "principalId", 36),
        (APP / "rbac.bicep", "managedIdentityPrincipalId", 36),
        (APP / "rbac.bicep", "operatorPrincipalId", None),
        (INFRA / "main.bicep", "principalId", None),
        (INFRA / "main.bicep", "certificateTenantId", None),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else str(v),
)
def test_guid_parameters_are_bounded_to_36_characters(
    path: Path, param: str, minimum: int | None
) -> None:
    tpl = template(path)
    assert decorator(tpl, param, "maxLength") == 36
    assert decorator(tpl, param, "minLength") == minimum


# --- 4. storage ---------------------------------------------------------------------------------


def test_every_queue_table_and_container_is_declared() -> None:
    dep = deployment()
    storage = template(APP / "storage.bicep")
    bindings = dep.module_params("storage")
    queues = [copy["name"] for copy in dep.instances(storage, "queues", bindings)]
    expected = list(DESTINATION_QUEUES.values())
    assert queues == expected + [f"{q}-poison" for q in expected]
    assert static(main(), main().vars["destinationQueues"].body) == DESTINATION_QUEUES
    assert set(DESTINATION_QUEUES) == set(DESTINATIONS)
    table = evaluate(storage, body(storage, "runStateTable")["name"], bindings)
    assert table == "runstates"
    containers = {
        evaluate(storage, body(storage, name)["name"], bindings)
        for name in ("deploymentContainer", "payloadContainer")
    }
    assert "compliance-payloads" in containers
    for name in ("deploymentContainer", "payloadContainer"):
        assert static(storage, body(storage, name)["properties"]) == {"publicAccess": "None"}


def test_the_names_are_the_codes() -> None:
    from shared import store

    assert store.QUEUES == DESTINATION_QUEUES
    assert all(store.poison_queue(d) == f"{q}-poison" for d, q in DESTINATION_QUEUES.items())
    assert (store.TABLE, store.PAYLOAD_CONTAINER) == ("runstates", "compliance-payloads")


def test_storage_account_accepts_only_entra_id_over_tls12() -> None:
    storage = template(APP / "storage.bicep")
    props = static(storage, body(storage, "storage")["properties"])
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True


def test_application_insights_accepts_only_entra_id_ingestion() -> None:
    monitoring = template(APP / "monitoring.bicep")
    component = body(monitoring, "applicationInsights")["properties"]
    props = {k: v for k, v, _ in properties(monitoring, component)}
    assert static(monitoring, props["DisableLocalAuth"]) is True


# --- 5. roles -----------------------------------------------------------------------------------

ACCOUNT = "Microsoft.Storage/storageAccounts"
QUEUE = "Microsoft.Storage/storageAccounts/queueServices/queues"
TABLE = "Microsoft.Storage/storageAccounts/tableServices/tables"
COMPONENT = "Microsoft.Insights/components"
RULE = "Microsoft.Insights/dataCollectionRules"
VAULT = "Microsoft.KeyVault/vaults"
APP_ROLES = {
    ("app", "Storage Blob Data Owner", ACCOUNT, "stbridge"),
    ("app", "Storage Table Data Contributor", TABLE, "runstates"),
    ("app", "Monitoring Metrics Publisher", COMPONENT, "appi-bridge"),
}


def queue_roles(who: str, role: str, destinations: list[str], *, poison: bool) -> set[Any]:
    suffix = "-poison" if poison else ""
    return {(who, role, QUEUE, DESTINATION_QUEUES[d] + suffix) for d in destinations}


def expected_roles(destinations: list[str], *, hmac: bool, operator: bool) -> set[Any]:
    roles = set(APP_ROLES)
    for poison in (False, True):
        roles |= queue_roles("app", "Storage Queue Data Contributor", destinations, poison=poison)
    if "logs" in destinations:
        roles.add(("app", "Monitoring Metrics Publisher", RULE, "dcr-bridge"))
    if hmac:
        roles.add(("app", "Key Vault Secrets User", VAULT, "kv-bridge"))
    if not operator:
        return roles
    # status/doctor peek every queue; replay receives and deletes dead letters and sends them
    # back; status/doctor read the table; hmac adds rotating the secrets.
    for poison in (False, True):
        roles |= queue_roles("operator", "Storage Queue Data Reader", destinations, poison=poison)
    processor, sender = "Storage Queue Data Message Processor", "Storage Queue Data Message Sender"
    roles |= queue_roles("operator", processor, destinations, poison=True)
    roles |= queue_roles("operator", sender, destinations, poison=False)
    roles.add(("operator", "Storage Table Data Reader", TABLE, "runstates"))
    if hmac:
        roles.add(("operator", "Key Vault Secrets Officer", VAULT, "kv-bridge"))
    return roles


CERTIFICATE_OPERATOR = {"principalId": OPERATOR, "authMode": "certificate", "trustedCaCerts": "x"}


@pytest.mark.parametrize(
    ("params", "destinations", "hmac", "operator"),
    [
        ({}, ["graph"], True, False),
        ({"principalId": OPERATOR}, ["graph"], True, True),
        (CERTIFICATE_OPERATOR, ["graph"], False, True),
        ({"principalId": OPERATOR, "destinations": "graph,logs"}, ["graph", "logs"], True, True),
        (ALL_ON, ["graph", "logs", "entra"], True, True),
    ],
    ids=["defaults", "operator", "certificate", "graph+logs", "everything"],
)
def test_each_principal_gets_exactly_the_roles_it_needs(
    params: dict[str, Any], destinations: list[str], hmac: bool, operator: bool
) -> None:
    found = deployment(**params).role_assignments()
    assert found == expected_roles(destinations, hmac=hmac, operator=operator)


def test_the_operator_gets_no_role_that_creates_or_writes_storage() -> None:
    found = deployment(**ALL_ON).role_assignments()
    operator_roles = {role for who, role, *_ in found if who == "operator"}
    assert operator_roles.isdisjoint(
        {
            "Storage Queue Data Contributor",
            "Storage Table Data Contributor",
            "Storage Blob Data Owner",
        }
    )


def test_each_role_is_named_next_to_its_builtin_guid() -> None:
    rbac = template(APP / "rbac.bicep")
    assert static(rbac, rbac.vars["roles"].body) == ROLE_GUIDS
    for name, guid in ROLE_GUIDS.items():
        assert f"'{name}': '{guid}'" in text(APP / "rbac.bicep")
    # Every assignment names its role through that table, as a subscription-level definition.
    for resource in rbac.resources:
        if resource.type_text.startswith("Microsoft.Authorization/roleAssignments@"):
            source = resource.node.text.decode()
            definition = (
                r"roleDefinitionId: subscriptionResourceId\("
                r"'Microsoft.Authorization/roleDefinitions', roles\['[^']+'\]\)"
            )
            assert re.search(definition, source), resource.name


def test_role_assignments_live_in_the_one_rbac_module() -> None:
    holders = {rel(p) for p in BICEP_FILES if "Microsoft.Authorization/roleAssignments" in text(p)}
    assert holders == {"infra/app/rbac.bicep"}


# --- 6. the Graph permission --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destinations", "roles"),
    [
        ("graph", ["DeviceManagementConfiguration.ReadWrite.All"]),
        ("graph,logs", ["DeviceManagementConfiguration.ReadWrite.All"]),
        ("graph,entra", ["DeviceManagementConfiguration.ReadWrite.All", "Device.ReadWrite.All"]),
    ],
)
def test_graph_app_roles_follow_the_destinations(destinations: str, roles: list[str]) -> None:
    dep = deployment(destinations=destinations, grantGraphPermission=True)
    assert dep.module_enabled("graphPermission")
    params = dep.module_params("graphPermission")
    assert params == {"principalId": PRINCIPAL, "appRoleValues": roles}
    assert not deployment(destinations=destinations).module_enabled("graphPermission")


def test_graph_module_resolves_each_role_by_name_with_a_well_known_fallback() -> None:
    module = template(APP / "graph-permission.bicep")
    assert static(module, module.vars["graphAppId"].body) == "00000003-0000-0000-c000-000000000000"
    assert static(module, module.vars["wellKnownAppRoleIds"].body) == GRAPH_APP_ROLES
    grant = body(module, "grants")
    assert grant["appRoleId"].text.decode() == (
        "contains(graphAppRoleIds, value) ? graphAppRoleIds[value] : wellKnownAppRoleIds[value]"
    )
    lookup = module.vars["graphAppRoleIds"].body.text.decode()
    assert (
        "filter(graph.appRoles, role => contains(role.allowedMemberTypes, 'Application'))" in lookup
    )
    assert declaration(module, "graph").existing


def fake_az(tmp_path: Path, role_ids: dict[str, str]) -> Path:
    """An `az` on PATH that answers the script's calls like Graph would and logs each call."""
    script = tmp_path / "az"
    roles = json.dumps(role_ids)
    script.write_text(
        f"""#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]
with open({str(tmp_path / "calls.jsonl")!r}, "a") as log:
    log.write(json.dumps(args) + "\\n")
query = args[args.index("--query") + 1] if "--query" in args else ""
if args[:2] == ["cloud", "show"]:
    print("https://graph.microsoft.com/")
elif "--method" in args and args[args.index("--method") + 1] == "get":
    if query == "id":
        print("graph-sp-id")
    elif query.startswith("appRoles"):
        value = query.split("value=='")[1].split("'")[0]
        print(json.loads({roles!r}).get(value, ""))
    else:
        print("")
"""
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return tmp_path / "calls.jsonl"


@pytest.mark.parametrize(
    ("destinations", "granted"),
    [
        (None, ["DeviceManagementConfiguration.ReadWrite.All"]),
        ("graph,logs", ["DeviceManagementConfiguration.ReadWrite.All"]),
        ("graph; entra", ["DeviceManagementConfiguration.ReadWrite.All", "Device.ReadWrite.All"]),
    ],
)
def test_grant_script_posts_one_assignment_per_role(
    destinations: str | None, granted: list[str], tmp_path: Path
) -> None:
    calls = fake_az(tmp_path, GRAPH_APP_ROLES)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    env.pop("BRIDGE_DESTINATIONS", None)
    if destinations is not None:
        env["BRIDGE_DESTINATIONS"] = destinations
    script = INFRA / "scripts" / "grant-graph-permission.sh"
    done = subprocess.run(
        ["bash", str(script), PRINCIPAL],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    posts = [json.loads(line) for line in calls.read_text().splitlines() if '"post"' in line]
    bodies = [json.loads(call[call.index("--body") + 1]) for call in posts]
    assert bodies == [
        {"principalId": PRINCIPAL, "resourceId": "graph-sp-id", "appRoleId": GRAPH_APP_ROLES[role]}
        for role in granted
    ]
    assert all(f"/servicePrincipals/{PRINCIPAL}/appRoleAssignments" in " ".join(c) for c in posts)


def test_grant_script_is_clean_shell() -> None:
    script = INFRA / "scripts" / "grant-graph-permission.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(script)], check=True)


# --- 7. names, parameters, outputs --------------------------------------------------------------


@pytest.mark.parametrize("path", BICEP_FILES, ids=rel)
def test_every_parameter_has_a_description(path: Path) -> None:
    tpl = template(path)
    for name in tpl.params:
        description = decorator(tpl, name, "description")
        assert isinstance(description, str) and description.strip(), f"{rel(path)}: {name}"


def test_bicepconfig_makes_the_strict_rules_errors() -> None:
    config = json.loads(text(INFRA / "bicepconfig.json"))
    rules = config["analyzers"]["core"]["rules"]
    for rule in STRICT_LINTER_RULES:
        assert rules[rule]["level"] == "error", rule
    assert config["extensions"]["microsoftGraphV1"].startswith(
        "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:"
    )


def test_names_come_from_the_abbreviation_map_and_the_resource_token() -> None:
    abbreviations = json.loads(text(INFRA / "abbreviations.json"))
    source = text(INFRA / "main.bicep")
    used = set(re.findall(r"\$\{abbrs\.(\w+)\}", source))
    assert used == set(abbreviations), "every abbreviation used, every used one defined"
    for literal in re.findall(r"'[^'\n]*\$\{abbrs\.\w+\}[^'\n]*'", source):
        assert re.search(r"\$\{(resourceToken|environmentName|keyVaultToken)\}", literal), literal


def test_the_key_vault_name_takes_a_salt() -> None:
    # Purge protection holds a deleted vault's name for 90 days: a salt gives a new one.
    token = main().vars["keyVaultToken"].body
    unsalted = evaluate(main(), token, {"keyVaultNameSalt": ""}, {"resourceToken": "abc"})
    assert unsalted == "abc"
    with pytest.raises(Unresolved, match="uniqueString"):
        # Salted, the token is a new uniqueString of the old one and the salt.
        evaluate(main(), token, {"keyVaultNameSalt": "2"}, {"resourceToken": "abc"})
    assert "'${abbrs.keyVaultVaults}${keyVaultToken}'" in text(INFRA / "main.bicep")
    assert decorator(main(), "keyVaultNameSalt", "maxLength") == 24


def test_azd_wiring() -> None:
    azure_yaml = text(ROOT / "azure.yaml")
    assert re.search(
        r"^services:\n  api:\n    project: \.\n    language: python\n    host: function$",
        azure_yaml,
        re.MULTILINE,
    )
    assert "tags: union(tags, { 'azd-service-name': 'api' })" in text(APP / "api.bicep")
    values = azd_parameters()
    assert values["environmentName"] == "${AZURE_ENV_NAME}"
    assert values["location"] == "${AZURE_LOCATION}"
    assert values["principalId"] == "${AZURE_PRINCIPAL_ID}"
    assert set(values) <= set(main().params)


def azd_parameters() -> dict[str, str]:
    parameters = json.loads(text(INFRA / "main.parameters.json"))["parameters"]
    return {name: entry["value"] for name, entry in parameters.items()}


def test_azd_defaults_equal_the_bicep_defaults() -> None:
    for name, value in azd_parameters().items():
        match = re.fullmatch(r"\$\{(\w+)(?:=([^}]*))?\}", value)
        assert match, value
        default = match[2]
        param = main().params[name]
        if default is not None and param.body is not None:
            assert str(static(main(), param.body)).lower() == default.lower(), name


def test_the_deploy_docs_list_every_azd_value_with_its_parameter() -> None:
    doc = text(ROOT / "docs" / "operations.md")
    rows = dict(re.findall(r"^\| `(\w+)` \| `(\w+)` \|", doc, re.MULTILINE))
    for name, value in azd_parameters().items():
        env = re.match(r"\$\{(\w+)", value)[1]
        if env in {
            "AZURE_ENV_NAME",
            "AZURE_LOCATION",
            "AZURE_PRINCIPAL_ID",
            "AZURE_PRINCIPAL_TYPE",
        }:
            continue
        assert rows.get(env) == name, f"docs/operations.md lacks the row `{env}` | `{name}`"
    # And the CLI-only example passes only real parameters.
    cli = doc[doc.index("### With the Azure CLI only") :]
    example = cli[: cli.index("```", cli.index("```sh") + 5)]
    for used in re.findall(r"(\w+)=", example):
        assert used in main().params, f"the CLI example passes unknown parameter {used}"


def test_outputs_are_the_names_azd_consumes_and_hold_no_secret() -> None:
    source = text(INFRA / "main.bicep")
    outputs = set(re.findall(r"^output (\w+) ", source, re.MULTILINE))
    assert outputs >= AZD_OUTPUTS
    for path in BICEP_FILES:
        for line in text(path).splitlines():
            if line.startswith("output "):
                assert "hmacSecrets" not in line, f"{rel(path)}: {line}"
                assert "password" not in line.lower(), f"{rel(path)}: {line}"


def test_secure_parameters_are_secure_everywhere() -> None:
    for path in (APP / "keyvault.bicep", INFRA / "main.bicep"):
        assert decorator(template(path), "hmacSecrets", "secure") is True, rel(path)


def test_graph_cloud_parameter_offers_exactly_the_clouds_the_code_knows() -> None:
    assert decorator(main(), "graphCloud", "allowed") == [cloud.value for cloud in Cloud]
    assert static(main(), main().params["graphCloud"].body) == Cloud.GLOBAL.value


# --- 8. telemetry contract, alerts, workbook ----------------------------------------------------

_EVENT_EQUALS = re.compile(r"\bname\s*(?:==|!=|=~|!~)\s*\"([^\"]*)\"")
_EVENT_IN = re.compile(r"\bname\s+!?in~?\s*\(([^)]*)\)")
_DIMENSION = re.compile(
    r"customDimensions(?:\s*\.\s*([A-Za-z_]\w*)|\s*\[\s*[\"']([^\"']+)[\"']\s*\])"
)


def contract() -> dict[str, list[str]]:
    return json.loads(text(INFRA / "telemetry-contract.json"))


def referenced_names(kql: str) -> tuple[set[str], set[str]]:
    events = set(_EVENT_EQUALS.findall(kql))
    for group in _EVENT_IN.findall(kql):
        events |= {item.strip().strip("\"'") for item in group.split(",") if item.strip()}
    dimensions = {dotted or indexed for dotted, indexed in _DIMENSION.findall(kql)}
    return events, dimensions


def test_reference_extraction_sees_what_it_should() -> None:
    kql = (
        'customEvents | where name == "x" or name in ("y", "z")\n'
        "| extend a = customDimensions.a, b = customDimensions['b']"
    )
    assert referenced_names(kql) == ({"x", "y", "z"}, {"a", "b"})


@pytest.mark.parametrize("path", KQL_FILES, ids=rel)
def test_query_references_only_contract_names(path: Path) -> None:
    # customDimensions is dynamic: the binder (tests/test_kql.py) cannot check its keys.
    kql = text(path)
    events, dimensions = referenced_names(kql)
    names = contract()
    assert events <= set(names["events"]), f"unknown events {events - set(names['events'])}"
    assert dimensions <= set(names["dimensions"]), (
        f"unknown keys {dimensions - set(names['dimensions'])}"
    )
    assert kql.count("customDimensions") == len(_DIMENSION.findall(kql))


def loaded(tpl: Template, variable: str) -> list[str]:
    return re.findall(r"\.\./queries/([\w.-]+\.kql)", tpl.vars[variable].body.text.decode())


@pytest.mark.parametrize("logs", [False, True], ids=["without logs", "with logs"])
def test_alert_rules_per_destination(logs: bool) -> None:
    dep = deployment(destinations="graph,logs" if logs else "graph", scriptInterval="1d")
    alerts = template(APP / "alerts.bicep")
    bindings = dep.module_params("alerts")
    ext = {
        **EXTERNALS,
        "applicationInsights.id": "component-id",
        "workspace.id": "workspace-id",
    }
    rules = evaluate(alerts, alerts.vars["rules"].body, bindings, ext)
    scopes = {rule["name"]: rule["scope"] for rule in rules}
    expected = {
        "poisoned": "component-id",
        "endpoint-unsupported": "component-id",
        "graph-throttling": "component-id",
        "function-failures": "component-id",
    }
    if logs:
        expected["devices-silent"] = "workspace-id"
    assert scopes == expected
    silent = [rule for rule in rules if rule["name"] == "devices-silent"]
    for rule in silent:
        assert rule["overrideQueryTimeRange"] == "P2D"
        # BRIDGE_SCRIPT_INTERVAL reaches the query (tests/test_kql.py binds the replaced text).
        assert "let scriptInterval = 1d;" in rule["query"]
        assert "8h" not in rule["query"]


def test_alert_rules_are_log_alerts_with_optional_notifications() -> None:
    alerts = template(APP / "alerts.bicep")
    rule = body(alerts, "alertRules")
    assert static(alerts, rule["kind"]) == "LogAlert"
    assert decorator(alerts, "alertEmail", "description")
    assert static(alerts, alerts.params["alertEmail"].body) == ""
    assert condition(alerts, "actionGroup").text.decode() == "(!empty(alertEmail))"
    group = static(alerts, body(alerts, "actionGroup")["location"])
    assert group == "global"


def test_alerts_and_workbook_run_only_the_shared_query_files() -> None:
    alerts, workbook = template(APP / "alerts.bicep"), template(APP / "workbook.bicep")
    names = (
        loaded(alerts, "componentRules")
        + loaded(alerts, "silentDevicesRule")
        + loaded(workbook, "tiles")
        + loaded(workbook, "complianceTiles")
    )
    assert sorted(names) == sorted(p.name for p in KQL_FILES)
    for path in (APP / "alerts.bicep", APP / "workbook.bicep"):
        code = without_comments(text(path))
        for token in ("customEvents", "customDimensions", "requests\n", "| where", "_CL\n"):
            assert token not in code, f"{rel(path)} has inline KQL ({token.strip()})"


@pytest.mark.parametrize("logs", [False, True], ids=["without logs", "with logs"])
def test_workbook_tiles_per_destination(logs: bool) -> None:
    dep = deployment(destinations="graph,logs" if logs else "graph", scriptInterval="12h")
    workbook = template(APP / "workbook.bicep")
    bindings = dep.module_params("workbook")
    ext = {**EXTERNALS, "applicationInsights.id": "c", "workspace.id": "w"}
    content = evaluate(workbook, workbook.vars["workbookContent"].body, bindings, ext)
    tiles = {item["name"]: item["content"] for item in content["items"] if item["type"] == 3}
    component = {"states-by-script", "delivery-latency", "outcomes-over-time", "reasons"}
    compliance = {"compliance-states-over-time", "compliance-latest", "compliance-silent"}
    assert set(tiles) == component | (compliance if logs else set())
    for name, tile in tiles.items():
        scoped = tile["resourceType"]
        if name in compliance:
            assert scoped == "microsoft.operationalinsights/workspaces"
            assert tile["crossComponentResources"] == ["w"]
        else:
            assert scoped == "microsoft.insights/components"
    if logs:
        assert "let scriptInterval = 12h;" in tiles["compliance-silent"]["query"]


# --- 9. docs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", KQL_FILES, ids=rel)
def test_operations_doc_shows_each_query_verbatim(path: Path) -> None:
    assert text(path).strip() in text(ROOT / "docs" / "operations.md")


def test_operations_doc_covers_the_runbook_and_the_first_run() -> None:
    doc = text(ROOT / "docs" / "operations.md")
    for heading in (
        "## Deploy",
        "## Grant the Graph permission",
        "## Rotate the HMAC secrets",
        "## Certificate mode",
        "## Queries",
        "## What was checked, and what only a deployment can tell",
        "### Poison messages",
        "### endpoint_unsupported",
        "### Throttling",
        "### Silent devices",
    ):
        assert f"\n{heading}\n" in doc, heading
    assert "python -m shared replay" in doc
    # The first-run Graph grant can race the identity's replication: the docs say to rerun.
    grant = doc[doc.index("## Grant the Graph permission") :]
    assert "azd provision" in grant[: grant.index("\n## ", 5)]
    assert "Device.ReadWrite.All" in grant
    # After azd down the vault name is held for 90 days: the docs give both ways out.
    assert "az keyvault recover" in doc and "BRIDGE_KEY_VAULT_SALT" in doc
