"""The infra, checked without the Bicep CLI (it cannot be installed on these machines).

tree-sitter-bicep proves every .bicep file is well-formed; pycep-parser turns each into a dict for
the structural assertions. Where pycep mis-reads a construct (operator precedence in `a && b`,
`!x ? a : b`), the test asserts on the text with a precise regex and says so. The settings check
derives its list from `shared.settings.Settings`, so a new setting without infra fails here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tree_sitter
import tree_sitter_bicep
from pycep import BicepParser

from shared.settings import Cloud, Settings

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

# Role name, its built-in GUID, and the resource type of the narrowest scope it is granted at.
IDENTITY_ROLES = [
    (
        "Storage Blob Data Owner",
        "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
        "Microsoft.Storage/storageAccounts",
    ),
    (
        "Storage Queue Data Contributor",
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        "Microsoft.Storage/storageAccounts/queueServices/queues",
    ),
    (
        "Storage Queue Data Contributor",
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
        "Microsoft.Storage/storageAccounts/queueServices/queues",
    ),
    (
        "Storage Table Data Contributor",
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
        "Microsoft.Storage/storageAccounts/tableServices/tables",
    ),
    (
        "Monitoring Metrics Publisher",
        "3913510d-42f4-4e42-8a64-420c390055eb",
        "Microsoft.Insights/components",
    ),
    ("Key Vault Secrets User", "4633458b-17de-408a-b874-0445c86b69e6", "Microsoft.KeyVault/vaults"),
]

STRICT_LINTER_RULES = [
    "use-recent-api-versions",
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

_EXTENSION_LINE = re.compile(rb"^extension\s+\w+[^\n]*$", re.MULTILINE)
_LANGUAGE = tree_sitter.Language(tree_sitter_bicep.language())


# --- helpers ------------------------------------------------------------------------------------


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@cache
def parsed(path: Path) -> dict[str, Any]:
    return BicepParser().parse(file_path=path)


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def without_comments(source: str) -> str:
    """Drop `//` comments (not the `//` inside 'https://...' strings)."""
    return re.sub(r"(^|\s)//[^\n]*", r"\1", source)


def body(declaration: dict[str, Any]) -> dict[str, Any]:
    """A resource's or module's body; pycep wraps conditional ones in {condition, config}."""
    config = declaration["config"]
    return config["config"] if "condition" in config and "config" in config else config


def resources_of(path: Path, resource_type: str) -> dict[str, dict[str, Any]]:
    found = parsed(path)["resources"]
    return {k: v for k, v in found.items() if v["type"].lower() == resource_type.lower()}


def only_resource(path: Path, resource_type: str) -> dict[str, Any]:
    matches = resources_of(path, resource_type)
    assert len(matches) == 1, f"{rel(path)}: expected one {resource_type}, found {list(matches)}"
    return next(iter(matches.values()))


def key(mapping: dict[str, Any], name: str) -> Any:
    """Look a property up case-insensitively (ARM property names are case-insensitive)."""
    for candidate, value in mapping.items():
        if candidate.strip("'").lower() == name.lower():
            return value
    raise KeyError(name)


def dotted(node: Any) -> str:
    """Render pycep's property-access tree (`a.b.c`) back to its text."""
    if isinstance(node, str):
        return node
    operator = node["operator"]
    assert operator["type"] == "property_accessor", node
    return (
        f"{dotted(operator['operands']['operand_1'])}.{dotted(operator['operands']['operand_2'])}"
    )


def param_default(path: Path, name: str) -> Any:
    return parsed(path)["parameters"][name]["default"]


def decorator(param: dict[str, Any], kind: str) -> Any:
    for item in param["decorators"]:
        if item["type"] == kind:
            return item.get("argument", True)
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


def host_settings() -> dict[str, Any]:
    return parsed(APP / "api.bicep")["variables"]["hostSettings"]["value"]


def bridge_settings() -> dict[str, Any]:
    return parsed(INFRA / "main.bicep")["variables"]["bridgeSettings"]["value"]


def deployed_settings() -> dict[str, Any]:
    """Every app setting the function app gets: main's bridgeSettings merged under api's."""
    merged = {k.strip("'"): v for k, v in bridge_settings().items()}
    merged.update({k.strip("'"): v for k, v in host_settings().items()})
    return merged


def code_setting_names() -> dict[str, str]:
    """App-setting name -> Settings field, read from the model at test time."""
    names: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.alias or field.validation_alias
        assert isinstance(alias, str), f"Settings.{field_name} has no string alias (setting name)"
        names[alias] = field_name
    return names


def contract() -> dict[str, list[str]]:
    return json.loads(text(INFRA / "telemetry-contract.json"))


# --- 1. syntax ----------------------------------------------------------------------------------


def test_the_infra_exists_where_azd_looks_for_it() -> None:
    expected = {
        "main.bicep",
        "app/api.bicep",
        "app/storage.bicep",
        "app/monitoring.bicep",
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
    problems = syntax_problems(source)
    if problems:
        # tree-sitter-bicep predates the `extension` keyword; such a file is parsed again with the
        # declaration blanked out (positions kept), and checked structurally by pycep instead.
        assert _EXTENSION_LINE.search(source), f"{rel(path)}: {problems}"
        masked = _EXTENSION_LINE.sub(lambda m: b" " * len(m.group()), source)
        assert syntax_problems(masked) == [], f"{rel(path)} beyond its extension line"
        assert parsed(path).get("extensions"), f"{rel(path)}: pycep sees no extension"


def test_pycep_fallback_is_used_only_for_files_with_an_extension_declaration() -> None:
    failing = {p for p in BICEP_FILES if syntax_problems(p.read_bytes())}
    declaring = {p for p in BICEP_FILES if _EXTENSION_LINE.search(p.read_bytes())}
    assert failing == declaring == {APP / "graph-permission.bicep"}


def test_syntax_check_catches_a_broken_file() -> None:
    source = (APP / "api.bicep").read_bytes()
    assert syntax_problems(source[: len(source) // 2]), "a truncated template must be flagged"
    assert syntax_problems(source.replace(b"properties: {", b"properties {", 1))


@pytest.mark.parametrize("path", BICEP_FILES, ids=rel)
def test_pycep_reads_every_file(path: Path) -> None:
    tree = parsed(path)
    assert tree.get("parameters") or tree.get("resources") or tree.get("modules")


# --- 2. structure: security settings ------------------------------------------------------------


def test_storage_account_accepts_only_entra_id_over_tls12() -> None:
    account = body(only_resource(APP / "storage.bicep", "Microsoft.Storage/storageAccounts"))
    props = account["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["allowBlobPublicAccess"] is False
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["supportsHttpsTrafficOnly"] is True


def test_storage_holds_the_queues_table_and_deployment_container() -> None:
    main_vars = parsed(INFRA / "main.bicep")["variables"]
    assert main_vars["queueName"]["value"] == "compliance-results"
    # The Functions host dead-letters to "<queue>-poison".
    assert main_vars["poisonQueueName"]["value"] == "${queueName}-poison"
    assert main_vars["runStateTableName"]["value"] == "runstates"
    storage = APP / "storage.bicep"
    queues = resources_of(storage, "Microsoft.Storage/storageAccounts/queueServices/queues")
    assert sorted(body(q)["name"] for q in queues.values()) == ["poisonQueueName", "queueName"]
    tables = resources_of(storage, "Microsoft.Storage/storageAccounts/tableServices/tables")
    assert [body(t)["name"] for t in tables.values()] == ["runStateTableName"]
    container = only_resource(storage, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert body(container)["properties"]["publicAccess"] == "None"
    params = body(parsed(INFRA / "main.bicep")["modules"]["storage"])["params"]
    assert params["queueName"] == "queueName"
    assert params["poisonQueueName"] == "poisonQueueName"
    assert params["runStateTableName"] == "runStateTableName"


def test_function_app_is_https_only_tls12_and_without_ftp_or_basic_auth() -> None:
    api = APP / "api.bicep"
    site = body(only_resource(api, "Microsoft.Web/sites"))
    assert site["properties"]["httpsOnly"] is True
    assert site["properties"]["siteConfig"]["minTlsVersion"] == "1.2"
    assert site["properties"]["siteConfig"]["ftpsState"] == "Disabled"
    policies = resources_of(api, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body(p)["name"]: body(p)["properties"]["allow"] for p in policies.values()} == {
        "ftp": False,
        "scm": False,
    }


def test_application_insights_accepts_only_entra_id_ingestion() -> None:
    component = body(only_resource(APP / "monitoring.bicep", "Microsoft.Insights/components"))
    assert key(component["properties"], "disableLocalAuth") is True
    settings = host_settings()
    assert settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${identityClientId};Authorization=AAD"
    )
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in settings
    assert settings["PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"] == "true"


def test_plan_is_flex_consumption_fc1() -> None:
    plan = body(only_resource(APP / "api.bicep", "Microsoft.Web/serverfarms"))
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True


def test_function_app_uses_function_app_config_on_a_recent_api() -> None:
    declaration = only_resource(APP / "api.bicep", "Microsoft.Web/sites")
    assert declaration["api_version"] >= "2023-12-01"
    config = body(declaration)["properties"]["functionAppConfig"]
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"] == {
        "type": "UserAssignedIdentity",
        "userAssignedIdentityResourceId": "identityId",
    }
    assert set(config["scaleAndConcurrency"]) == {"instanceMemoryMB", "maximumInstanceCount"}
    assert config["runtime"] == {"name": "python", "version": "runtimeVersion"}


def test_runtime_is_the_python_the_tests_run_on() -> None:
    assert param_default(INFRA / "main.bicep", "pythonVersion") == TESTED_PYTHON
    api_params = body(parsed(INFRA / "main.bicep")["modules"]["api"])["params"]
    assert api_params["runtimeVersion"] == "pythonVersion"


def test_no_setting_flex_consumption_forbids() -> None:
    assert not FLEX_FORBIDDEN & set(deployed_settings())
    assert not FLEX_FORBIDDEN & set(code_setting_names()), "the code reads a setting Flex forbids"
    # Also outside the settings objects (siteConfig.appSettings, another module): names only
    # appear in comments, which are stripped first.
    for path in BICEP_FILES:
        code = without_comments(text(path))
        present = sorted(name for name in FLEX_FORBIDDEN if name in code)
        assert not present, f"{rel(path)} sets {present}"


def test_host_storage_is_identity_based() -> None:
    settings = host_settings()
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    for service in ("blob", "queue", "table"):
        assert f"AzureWebJobsStorage__{service}ServiceUri" in settings
    # A plain AzureWebJobsStorage would be a connection string, i.e. an account key.
    assert "AzureWebJobsStorage" not in deployed_settings()


def test_one_user_assigned_identity_is_used_for_everything() -> None:
    site = body(only_resource(APP / "api.bicep", "Microsoft.Web/sites"))
    assert site["identity"]["type"] == "UserAssigned"
    assert site["properties"]["keyVaultReferenceIdentity"] == "identityId"
    assert host_settings()["AZURE_CLIENT_ID"] == "identityClientId"
    api_params = body(parsed(INFRA / "main.bicep")["modules"]["api"])["params"]
    assert dotted(api_params["identityId"]) == "identity.outputs.resourceId"
    assert dotted(api_params["identityClientId"]) == "identity.outputs.clientId"
    for path in BICEP_FILES:
        assert "SystemAssigned" not in without_comments(text(path)), rel(path)


def test_every_setting_the_code_reads_is_deployed() -> None:
    missing = set(code_setting_names()) - set(NOT_DEPLOYED) - set(deployed_settings())
    assert not missing, f"settings the code reads but infra/ does not set: {sorted(missing)}"


def test_every_bridge_setting_deployed_is_one_the_code_reads() -> None:
    deployed = {name for name in deployed_settings() if name.startswith("BRIDGE_")}
    unknown = deployed - set(code_setting_names())
    assert not unknown, f"misspelt or obsolete settings in infra/: {sorted(unknown)}"


def evaluate(node: Any, params: dict[str, Any]) -> str:
    """The value a setting gets with every parameter at its default (the few forms used)."""
    if isinstance(node, bool):
        return str(node).lower()
    if isinstance(node, int | float):
        return str(node)
    if isinstance(node, str):
        value = params.get(node, node)
        return ",".join(value) if isinstance(value, list) else str(value)
    function = node["function"]
    args = list(function["parameters"].values())
    if function["type"] == "string":
        return evaluate(args[0], params)
    if function["type"] == "join":
        return args[1].join(params[args[0]])
    raise AssertionError(f"no evaluator for {function['type']}")


def test_deployed_settings_at_their_defaults_pass_the_code_validation() -> None:
    main = parsed(INFRA / "main.bicep")["parameters"]
    params = {name: param["default"] for name, param in main.items()}
    env = {name: evaluate(value, params) for name, value in bridge_settings().items()}
    # What the platform substitutes for the expressions in app/api.bicep.
    client_id = "11111111-2222-3333-4444-555555555555"
    env |= {
        "AZURE_CLIENT_ID": client_id,
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": client_id,
        "AzureWebJobsStorage__blobServiceUri": "https://st.blob.core.windows.net/",
        "AzureWebJobsStorage__queueServiceUri": "https://st.queue.core.windows.net/",
        "AzureWebJobsStorage__tableServiceUri": "https://st.table.core.windows.net/",
        # The Key Vault reference resolves to the secret's value: a Standard Webhooks secret.
        "BRIDGE_HMAC_SECRETS": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    }
    assert set(code_setting_names()) - set(NOT_DEPLOYED) <= set(env)
    settings = Settings.from_env(env)
    assert settings.delivery_mode == "queue"


def test_brief_settings_have_their_parameters() -> None:
    settings = bridge_settings()
    main = INFRA / "main.bicep"
    assert settings["BRIDGE_DELIVERY_MODE"] == "deliveryMode"
    assert param_default(main, "deliveryMode") == "queue"
    assert settings["BRIDGE_AUTH_MODE"] == "authMode"
    assert param_default(main, "graphWritesPerSecond") == 8
    # pycep renders `string(graphWritesPerSecond)` as a function node; check the text instead.
    assert re.search(
        r"^\s*BRIDGE_GRAPH_WRITES_PER_SECOND: string\(graphWritesPerSecond\)$",
        text(main),
        re.MULTILINE,
    )
    assert settings["BRIDGE_GRAPH_CLOUD"] == "graphCloud"


def test_graph_cloud_parameter_offers_exactly_the_clouds_the_code_knows() -> None:
    param = parsed(INFRA / "main.bicep")["parameters"]["graphCloud"]
    assert decorator(param, "allowed") == [cloud.value for cloud in Cloud]
    assert param["default"] == Cloud.GLOBAL.value


def test_hmac_secrets_are_a_key_vault_reference() -> None:
    assert (
        host_settings()["BRIDGE_HMAC_SECRETS"] == "@Microsoft.KeyVault(SecretUri=${hmacSecretUri})"
    )
    keyvault = APP / "keyvault.bicep"
    outputs = parsed(keyvault)["outputs"]
    # Versionless URI: the app follows rotations without a redeploy.
    assert (
        outputs["hmacSecretUri"]["value"] == "${vault.properties.vaultUri}secrets/${hmacSecretName}"
    )
    api_params = body(parsed(INFRA / "main.bicep")["modules"]["api"])["params"]
    assert dotted(api_params["hmacSecretUri"]) == "keyVault.outputs.hmacSecretUri"


def test_key_vault_uses_rbac_soft_delete_and_purge_protection() -> None:
    keyvault = APP / "keyvault.bicep"
    props = body(only_resource(keyvault, "Microsoft.KeyVault/vaults"))["properties"]
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    secret = body(only_resource(keyvault, "Microsoft.KeyVault/vaults/secrets"))
    assert secret["properties"]["value"] == "hmacSecrets"
    for path in (keyvault, INFRA / "main.bicep"):
        assert decorator(parsed(path)["parameters"]["hmacSecrets"], "secure"), rel(path)


def test_client_certificates_follow_auth_mode() -> None:
    site = body(only_resource(APP / "api.bicep", "Microsoft.Web/sites"))["properties"]
    assert site["clientCertEnabled"] == "enforceClientCertificate"
    assert site["clientCertMode"] == "Required"
    api_params = body(parsed(INFRA / "main.bicep")["modules"]["api"])["params"]
    assert api_params["enforceClientCertificate"] == "enforceClientCertificate"
    # pycep mis-nests `a && b == c`, so the expression is checked as text.
    assert re.search(
        r"^var enforceClientCertificate = contains\(toLower\(authMode\), 'certificate'\)"
        r" && certificateFront == 'functionApp'$",
        text(INFRA / "main.bicep"),
        re.MULTILINE,
    )
    front = parsed(INFRA / "main.bicep")["parameters"]["certificateFront"]
    assert decorator(front, "allowed") == ["functionApp", "external"]


def test_each_role_is_granted_by_guid_at_the_narrowest_scope() -> None:
    rbac = APP / "rbac.bicep"
    tree = parsed(rbac)
    roles = {k.strip("'"): v for k, v in tree["variables"]["roles"]["value"].items()}
    types = {name: declaration["type"] for name, declaration in tree["resources"].items()}
    granted = []
    for declaration in resources_of(rbac, "Microsoft.Authorization/roleAssignments").values():
        assignment = body(declaration)
        if assignment["properties"]["principalId"] != "managedIdentityPrincipalId":
            continue
        definition = assignment["properties"]["roleDefinitionId"]["function"]
        assert definition["type"] == "subscription_resource_id"
        assert (
            definition["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
        )
        role = definition["parameters"]["resource_name_1"]["operator"]["operands"]["operand_2"]
        granted.append((role, roles[role], types[assignment["scope"]]))
    assert sorted(granted) == sorted(IDENTITY_ROLES)


def test_role_assignments_live_in_the_one_rbac_module() -> None:
    holders = {rel(p) for p in BICEP_FILES if "Microsoft.Authorization/roleAssignments" in text(p)}
    assert holders == {"infra/app/rbac.bicep"}
    # The role's name sits next to its GUID in the source.
    source = text(APP / "rbac.bicep")
    for name, guid, _ in IDENTITY_ROLES:
        assert f"'{name}': '{guid}'" in source


@pytest.mark.parametrize("path", BICEP_FILES, ids=rel)
def test_every_parameter_has_a_description(path: Path) -> None:
    for name, param in parsed(path).get("parameters", {}).items():
        description = decorator(param, "description")
        assert isinstance(description, str), f"{rel(path)}: param {name} has no @description"
        assert description.strip(), f"{rel(path)}: param {name} has an empty @description"


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
    assert (
        "var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))"
        in source
    )
    for literal in re.findall(r"'[^'\n]*\$\{abbrs\.\w+\}[^'\n]*'", source):
        # The resource group is named after the environment, like the azd templates.
        assert "${resourceToken}" in literal or "${environmentName}" in literal, literal


def test_azd_wiring() -> None:
    azure_yaml = text(ROOT / "azure.yaml")
    assert re.search(
        r"^services:\n  api:\n    project: \.\n    language: python\n    host: function$",
        azure_yaml,
        re.MULTILINE,
    )
    # pycep renders `union(tags, {...})` as a function; the tag is checked as text.
    assert "tags: union(tags, { 'azd-service-name': 'api' })" in text(APP / "api.bicep")
    parameters = json.loads(text(INFRA / "main.parameters.json"))["parameters"]
    values = {name: entry["value"] for name, entry in parameters.items()}
    assert values["environmentName"] == "${AZURE_ENV_NAME}"
    assert values["location"] == "${AZURE_LOCATION}"
    assert values["principalId"] == "${AZURE_PRINCIPAL_ID}"
    assert set(values) <= set(parsed(INFRA / "main.bicep")["parameters"])


def test_outputs_are_the_names_azd_consumes_and_hold_no_secret() -> None:
    outputs = parsed(INFRA / "main.bicep")["outputs"]
    assert set(outputs) >= AZD_OUTPUTS
    for path in BICEP_FILES:
        for line in text(path).splitlines():
            if line.startswith("output "):
                assert "hmacSecrets" not in line, f"{rel(path)}: {line}"
                assert "password" not in line.lower(), f"{rel(path)}: {line}"


def test_graph_permission_module_is_optional_and_resolves_the_role_by_name() -> None:
    module = APP / "graph-permission.bicep"
    tree = parsed(module)
    assert "microsoftGraphV1" in tree["extensions"]
    assert tree["variables"]["graphAppId"]["value"] == "00000003-0000-0000-c000-000000000000"
    assert (
        tree["variables"]["appRoleValue"]["value"] == "DeviceManagementConfiguration.ReadWrite.All"
    )
    assert (
        tree["variables"]["wellKnownAppRoleId"]["value"] == "9241abd9-d0e6-425a-bd4f-47ba86e767a4"
    )
    graph = tree["resources"]["graph"]
    assert (graph["type"], graph["api_version"], graph["existing"]) == (
        "Microsoft.Graph/servicePrincipals",
        "v1.0",
        True,
    )
    assert body(graph)["appId"] == "graphAppId"
    grant = body(only_resource(module, "Microsoft.Graph/appRoleAssignedTo"))
    assert grant["principalId"] == "principalId"
    assert dotted(grant["resourceId"]) == "graph.id"
    # The well-known id is only the fallback when the lookup by name finds nothing.
    choice = grant["appRoleId"]["operator"]
    assert choice["type"] == "conditional"
    assert choice["operands"]["condition"] == {
        "function": {"type": "empty", "parameters": {"item_to_test": "matchingRoles"}}
    }
    assert choice["operands"]["true_value"] == "wellKnownAppRoleId"
    # pycep mis-nests `a.b == c` inside a lambda, so the lookup is checked as text.
    assert re.search(
        r"^var matchingRoles = filter\(graph\.appRoles, role => role\.value == appRoleValue\)$",
        text(module),
        re.MULTILINE,
    )
    main = parsed(INFRA / "main.bicep")
    assert main["parameters"]["grantGraphPermission"]["default"] is False
    graph_module = main["modules"]["graphPermission"]["config"]
    assert graph_module["condition"] == "grantGraphPermission"
    assert dotted(graph_module["config"]["params"]["principalId"]) == "identity.outputs.principalId"


def test_grant_script_resolves_the_role_by_name_and_posts_the_assignment() -> None:
    script = INFRA / "scripts" / "grant-graph-permission.sh"
    source = text(script)
    assert "appRoles[?value=='$role_value'" in source
    assert re.search(r"az rest --method post \\\n\s+--url \"\$graph/servicePrincipals/", source)
    assert "/appRoleAssignments" in source
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(script)], check=True)


# --- 3. telemetry contract ----------------------------------------------------------------------

_EVENT_EQUALS = re.compile(r"\bname\s*(?:==|!=|=~|!~)\s*\"([^\"]*)\"")
_EVENT_IN = re.compile(r"\bname\s+!?in~?\s*\(([^)]*)\)")
_DIMENSION = re.compile(
    r"customDimensions(?:\s*\.\s*([A-Za-z_]\w*)|\s*\[\s*[\"']([^\"']+)[\"']\s*\])"
)


def referenced_names(kql: str) -> tuple[set[str], set[str]]:
    events = set(_EVENT_EQUALS.findall(kql))
    for group in _EVENT_IN.findall(kql):
        events |= {item.strip().strip("\"'") for item in group.split(",") if item.strip()}
    dimensions = {dotted or indexed for dotted, indexed in _DIMENSION.findall(kql)}
    return events, dimensions


def test_contract_lists_unique_names() -> None:
    names = contract()
    assert names["events"] and len(set(names["events"])) == len(names["events"])
    assert names["dimensions"] and len(set(names["dimensions"])) == len(names["dimensions"])


def test_reference_extraction_sees_what_it_should() -> None:
    kql = (
        'customEvents | where name == "x" or name in ("y", "z")\n'
        "| extend a = customDimensions.a, b = customDimensions['b']"
    )
    assert referenced_names(kql) == ({"x", "y", "z"}, {"a", "b"})


@pytest.mark.parametrize("path", KQL_FILES, ids=rel)
def test_query_references_only_contract_names(path: Path) -> None:
    kql = text(path)
    events, dimensions = referenced_names(kql)
    names = contract()
    assert events <= set(names["events"]), f"unknown events {events - set(names['events'])}"
    unknown = dimensions - set(names["dimensions"])
    assert not unknown, f"unknown customDimensions keys {unknown}"
    # Every customDimensions access is one the extraction understood (no dynamic keys).
    assert kql.count("customDimensions") == len(_DIMENSION.findall(kql))
    # Component-scoped tables, as the alert rules and the workbook are scoped to the component.
    first_table = next(line for line in kql.splitlines() if line and not line.startswith("//"))
    assert first_table.strip() in {"customEvents", "requests"}
    if events:
        assert first_table.strip() == "customEvents"


def loaded_queries(path: Path) -> list[str]:
    return re.findall(r"loadTextContent\('\.\./queries/([\w.-]+\.kql)'\)", text(path))


def test_alerts_and_workbook_run_only_the_shared_query_files() -> None:
    alerts = loaded_queries(APP / "alerts.bicep")
    workbook = loaded_queries(APP / "workbook.bicep")
    assert sorted(alerts) == [
        "alert-endpoint-unsupported.kql",
        "alert-function-failures.kql",
        "alert-graph-throttling.kql",
        "alert-poisoned.kql",
    ]
    assert len(workbook) == 4
    assert sorted(alerts + workbook) == sorted(p.name for p in KQL_FILES)
    for path in (APP / "alerts.bicep", APP / "workbook.bicep"):
        code = without_comments(text(path))
        for table in ("customEvents", "customDimensions", "requests\n", "| where"):
            assert table not in code, f"{rel(path)} has inline KQL ({table.strip()})"


def test_alert_rules_are_log_alerts_on_the_component() -> None:
    alerts = APP / "alerts.bicep"
    declaration = only_resource(alerts, "Microsoft.Insights/scheduledQueryRules")
    assert declaration["config"]["loop_type"]["detail"] == {
        "item_name": "rule",
        "array_name": "rules",
    }
    rule = body(declaration)
    assert rule["kind"] == "LogAlert"
    assert [dotted(scope) for scope in rule["properties"]["scopes"]] == ["applicationInsights.id"]
    (criterion,) = rule["properties"]["criteria"]["allOf"]
    assert dotted(criterion["query"]) == "rule.query"
    assert rule["properties"]["actions"]["actionGroups"] == "actionGroupIds"
    rules = parsed(alerts)["variables"]["rules"]["value"]
    files = {r["name"]: r["query"]["function"]["parameters"]["file_path"] for r in rules}
    assert files == {
        "poisoned": "../queries/alert-poisoned.kql",
        "endpoint-unsupported": "../queries/alert-endpoint-unsupported.kql",
        "graph-throttling": "../queries/alert-graph-throttling.kql",
        "function-failures": "../queries/alert-function-failures.kql",
    }
    group = body(only_resource(alerts, "Microsoft.Insights/actionGroups"))
    assert group["location"] == "global"
    assert group["properties"]["emailReceivers"][0]["emailAddress"] == "alertEmail"
    # The e-mail is optional: without it the rules exist but notify nobody.
    assert parsed(alerts)["parameters"]["alertEmail"]["default"] == ""
    assert only_resource(alerts, "Microsoft.Insights/actionGroups")["config"]["condition"]


def test_workbook_is_shared_and_built_from_the_query_files() -> None:
    workbook = body(only_resource(APP / "workbook.bicep", "Microsoft.Insights/workbooks"))
    assert workbook["kind"] == "shared"
    assert workbook["properties"]["serializedData"] == {
        "function": {"type": "string", "parameters": {"value_to_convert": "workbookContent"}}
    }
    assert dotted(workbook["properties"]["sourceId"]) == "applicationInsights.id"
    tiles = parsed(APP / "workbook.bicep")["variables"]["tiles"]["value"]
    files = [tile["query"]["function"]["parameters"]["file_path"] for tile in tiles]
    assert files == [f"../queries/{name}" for name in loaded_queries(APP / "workbook.bicep")]


# --- docs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", KQL_FILES, ids=rel)
def test_operations_doc_shows_each_query_verbatim(path: Path) -> None:
    assert text(path).strip() in text(ROOT / "docs" / "operations.md")


def test_operations_doc_covers_the_runbook() -> None:
    doc = text(ROOT / "docs" / "operations.md")
    for heading in (
        "## Deploy",
        "## Grant the Graph permission",
        "## Rotate the HMAC secrets",
        "## Certificate mode",
        "## Queries",
        "### Poison messages",
        "### endpoint_unsupported",
        "### Throttling",
    ):
        assert f"\n{heading}\n" in doc, heading
    assert "python -m shared replay --reason" in doc
