"""Every KQL query the bridge ships (alerts, workbook, docs/operations.md), parsed and bound with
Microsoft's Kusto.Language against the tables it runs on.

tests/kql/bind.js drives npm @kusto/language-service-next (the parser and binder behind the portal's
query editor): a misspelt column, a table the scope does not have, or a syntax error is a
diagnostic. Component-scoped queries see the classic Application Insights tables
(tests/fixtures/kql/schemas.json); workspace-scoped ones see the logs destination's custom table,
whose columns are read from infra/app/logs.bicep, so the table and its queries cannot drift apart.
"""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from tests.bicep_types import Template, properties

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
QUERIES = INFRA / "queries"
BIND = Path(__file__).resolve().parent / "kql" / "bind.js"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kql"
DOC = ROOT / "docs" / "operations.md"
CUSTOM_TABLE = "IntuneComplianceScriptState_CL"
# Kusto's names for the stream column types the data collection rule declares.
KUSTO_TYPES = {"string": "string", "datetime": "datetime", "int": "int", "long": "long",
               "real": "real", "boolean": "bool", "dynamic": "dynamic"}  # fmt: skip
# Which variable of which module puts a query file in which scope.
SCOPES = {
    ("alerts.bicep", "componentRules"): "component",
    ("alerts.bicep", "silentDevicesRule"): "workspace",
    ("workbook.bicep", "tiles"): "component",
    ("workbook.bicep", "complianceTiles"): "workspace",
}
_LOADED = re.compile(r"loadTextContent\('\.\./queries/([\w.-]+\.kql)'\)")
_DOC_BLOCK = re.compile(r"```kusto\n(.*?)```", re.DOTALL)


def custom_table_columns() -> dict[str, str]:
    """The stream's columns as infra/app/logs.bicep declares them (the `columns` variable)."""
    template = Template(INFRA / "app" / "logs.bicep", INFRA)
    columns = {}
    for element in template.vars["columns"].body.named_children:
        if element.type != "object":
            continue
        fields = {key: template.literal(value) for key, value, _ in properties(template, element)}
        columns[fields["name"]] = KUSTO_TYPES[fields["type"]]
    return columns


def databases() -> dict[str, dict[str, dict[str, str]]]:
    schemas = json.loads((FIXTURES / "schemas.json").read_text(encoding="utf-8"))
    workspace = {CUSTOM_TABLE: {**custom_table_columns(), **schemas["workspaceStandardColumns"]}}
    return {"component": schemas["component"], "workspace": workspace}


def query_scopes() -> dict[str, str]:
    """Query file -> the scope of the alert rule or workbook tile that runs it."""
    scopes: dict[str, str] = {}
    for (module, variable), scope in SCOPES.items():
        template = Template(INFRA / "app" / module, INFRA)
        for name in _LOADED.findall(template.vars[variable].body.text.decode()):
            assert scopes.setdefault(name, scope) == scope, f"{name} runs in two scopes"
    return scopes


def doc_queries() -> list[str]:
    return _DOC_BLOCK.findall(DOC.read_text(encoding="utf-8"))


def bind(queries: list[dict[str, str]]) -> dict[str, list[dict[str, Any]]]:
    request = json.dumps({"databases": databases(), "queries": queries})
    done = subprocess.run(
        ["node", str(BIND)], input=request, capture_output=True, text=True, timeout=120, check=False
    )
    # A missing @kusto/language-service-next (run `make install`) shows here, not as a pass.
    assert done.returncode == 0, done.stderr[-2000:]
    return {result["id"]: result["diagnostics"] for result in json.loads(done.stdout)}


@cache
def shipped() -> dict[str, list[dict[str, Any]]]:
    """Diagnostics of every query file and every kusto block of the docs, bound in one run."""
    queries = [
        {"id": name, "database": scope, "text": (QUERIES / name).read_text(encoding="utf-8")}
        for name, scope in query_scopes().items()
    ]
    for i, text in enumerate(doc_queries()):
        scope = "workspace" if CUSTOM_TABLE in text else "component"
        queries.append({"id": f"docs/operations.md#{i}", "database": scope, "text": text})
    return bind(queries)


def test_every_query_file_is_run_by_an_alert_or_a_tile() -> None:
    assert set(query_scopes()) == {path.name for path in QUERIES.glob("*.kql")}


@pytest.mark.parametrize("name", sorted(p.name for p in QUERIES.glob("*.kql")))
def test_query_file_parses_and_binds(name: str) -> None:
    assert shipped()[name] == []


def test_every_kusto_block_in_the_operations_doc_parses_and_binds() -> None:
    blocks = {key: value for key, value in shipped().items() if key.startswith("docs/")}
    assert len(blocks) >= len(list(QUERIES.glob("*.kql")))
    assert {key: value for key, value in blocks.items() if value} == {}


def test_the_custom_table_the_emulator_and_the_bridges_rows_agree_on_the_columns() -> None:
    """One set of columns in three places: the Bicep table, the local emulator, the rows written."""
    from devstack.logs import DEFAULT_COLUMNS
    from shared.destinations.logs import row

    message = {
        "acceptedAt": "2026-11-28T10:00:05.000000Z",
        "reportId": "r",
        "scriptId": "s",
        "deviceId": "d",
    }
    written = row(message, {"detectionState": "success", "scriptOutput": "{}"})
    assert custom_table_columns() == DEFAULT_COLUMNS
    assert set(written) == set(DEFAULT_COLUMNS)


@pytest.mark.parametrize(
    "name", ["alert-devices-silent.kql", "workbook-compliance-silent.kql"], ids=str
)
def test_the_interval_the_bicep_replaces_is_in_the_query(name: str) -> None:
    # app/alerts.bicep and app/workbook.bicep replace this exact line with BRIDGE_SCRIPT_INTERVAL;
    # if it changed, the replace would silently keep the 8h default.
    assert (QUERIES / name).read_text(encoding="utf-8").count("let scriptInterval = 8h;") == 1
    replaced = (QUERIES / name).read_text(encoding="utf-8").replace("= 8h;", "= 1d;")
    assert bind([{"id": name, "database": "workspace", "text": replaced}])[name] == []


# --- planted faults -----------------------------------------------------------------------------


def codes(diagnostics: list[dict[str, Any]]) -> list[str]:
    return [f"{d['code']} {d['message']}" for d in diagnostics]


def test_an_unknown_column_of_the_custom_table_is_caught() -> None:
    text = (FIXTURES / "unknown-column.kql").read_text(encoding="utf-8")
    (problem,) = codes(bind([{"id": "fault", "database": "workspace", "text": text}])["fault"])
    assert problem.startswith("KS142 The name 'DetectionStatus' does not refer to any known column")


def test_a_component_table_in_the_workspace_scope_is_caught() -> None:
    # customEvents exists only in the component's scope; in the workspace it is AppEvents.
    text = (QUERIES / "alert-poisoned.kql").read_text(encoding="utf-8")
    problems = codes(bind([{"id": "fault", "database": "workspace", "text": text}])["fault"])
    assert problems[0].startswith("KS204 The name 'customEvents' does not refer to any known table")


def test_a_syntax_error_is_caught() -> None:
    text = "requests\n| where success == false\n| summarize count() by"
    problems = codes(bind([{"id": "fault", "database": "component", "text": text}])["fault"])
    assert problems and all(p.startswith("KS") for p in problems)
