"""The checks a Bicep compiler would make on infra/: resource bodies against their type definitions,
the linter's API-age rule, unused parameters and variables, and module parameters; each shown to
catch a planted fault.

The definitions live in tests/fixtures/bicep-types (trimmed to the types infra/ uses), so the
project checks itself without this team's notes; tests/bicep_types.py is the checker.
"""

from __future__ import annotations

import json
import re
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.bicep_types import (
    GRACE_DAYS,
    MAX_AGE_DAYS,
    Checker,
    TypeIndex,
    acceptable_versions,
)

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
FAULTS = Path(__file__).resolve().parent / "fixtures" / "infra-faults"
TYPES = Path(__file__).resolve().parent / "fixtures" / "bicep-types"
TODAY = date.today()
_DECLARED = re.compile(r"""^resource\s+\w+\s+'([\w./]+@[\w.-]+)'""", re.MULTILINE)


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker(INFRA)


def declared_types() -> set[str]:
    return {
        match.lower()
        for path in INFRA.rglob("*.bicep")
        for match in _DECLARED.findall(path.read_text(encoding="utf-8"))
    }


# --- infra/ itself ------------------------------------------------------------------------------


def test_every_resource_body_matches_its_type_definition(checker: Checker) -> None:
    findings = checker.check_types()
    assert not findings, "\n".join(map(str, findings))


def test_every_api_version_passes_the_linters_age_rule_today(checker: Checker) -> None:
    findings = checker.check_api_ages(TODAY)
    assert not findings, "\n".join(map(str, findings))


def test_every_module_gets_exactly_the_parameters_its_file_declares(checker: Checker) -> None:
    findings = checker.check_modules()
    assert not findings, "\n".join(map(str, findings))


def test_no_parameter_or_variable_is_unused(checker: Checker) -> None:
    # no-unused-params and no-unused-vars are errors in bicepconfig.json: `bicep build` fails.
    findings = checker.check_unused()
    assert not findings, "\n".join(map(str, findings))


def test_the_checker_reads_every_resource_of_every_file(checker: Checker) -> None:
    # A parse that silently dropped declarations would make the checks above vacuous.
    seen = {r.type_text.lower() for t in checker.templates.values() for r in t.resources}
    assert seen == declared_types()
    assert len(checker.templates) == len(list(INFRA.rglob("*.bicep")))


def test_the_trimmed_definitions_hold_exactly_the_types_infra_uses() -> None:
    index = TypeIndex()
    assert set(index.resources) == declared_types()
    for rtype in {name.rpartition("@")[0] for name in declared_types()}:
        assert rtype in index.versions, f"versions.json lacks {rtype}"


def test_each_trimmed_definition_is_self_contained() -> None:
    for path in TYPES.rglob("*@*.json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data[0]["$type"] == "ResourceType", path.name
        refs = [int(r) for r in re.findall(r'"\$ref":"#/(\d+)"', path.read_text(encoding="utf-8"))]
        assert max(refs, default=0) < len(data), f"{path.name} points outside itself"


# --- planted faults -----------------------------------------------------------------------------


def findings_in(fault: str) -> list[str]:
    checker = Checker(FAULTS / fault)
    return [str(f) for f in checker.check_types() + checker.check_modules()]


def test_a_bogus_property_is_caught() -> None:
    (finding,) = findings_in("bogus-property")
    assert finding.startswith("main.bicep:11: properties.allowSharedKeyAcess: not a property of ")


def test_a_read_only_property_is_caught() -> None:
    assert findings_in("read-only") == ["main.bicep:7: properties.immutableId: read-only"]


def test_a_missing_required_property_is_caught() -> None:
    (finding,) = findings_in("missing-required")
    assert finding.endswith("properties.sku: required by VaultProperties")


def test_a_value_outside_a_closed_enum_is_caught_through_a_loop() -> None:
    (finding,) = findings_in("closed-enum")
    assert "properties.publicAccess: ['Everyone'] not among" in finding


def test_module_parameter_mistakes_are_caught() -> None:
    assert sorted(findings_in("module-param")) == [
        "main.bicep:3: child: param name missing",
        "main.bicep:6: child: child.bicep has no param nmae",
        "main.bicep:7: child: param size is int, given string",
        "main.bicep:8: child: param tier: ['Premium'] not allowed",
    ]


def test_an_unused_parameter_and_variable_are_caught() -> None:
    findings = [str(f) for f in Checker(FAULTS / "unused").check_unused()]
    assert findings == ["main.bicep:6: param leftover unused", "main.bicep:9: var stale unused"]


def test_an_aged_api_version_is_caught() -> None:
    findings = [str(f) for f in Checker(FAULTS / "aged-api").check_api_ages(TODAY)]
    assert len(findings) == 1
    assert "scheduledQueryRules@2023-12-01 is" in findings[0]
    assert findings[0].endswith("acceptable on " + str(TODAY) + ": 2026-03-01")


# --- the age rule itself ------------------------------------------------------------------------


def test_age_rule_accepts_any_recent_stable_version() -> None:
    today = date(2026, 12, 1)
    versions = {"2025-01-01", "2025-06-01", "2026-04-01", "2026-11-01", "2026-10-01-preview"}
    # 2026-11-01 is in its grace period and previews never count.
    assert acceptable_versions(versions, today) == {"2025-01-01", "2025-06-01", "2026-04-01"}


def test_age_rule_falls_back_to_the_newest_settled_version_when_all_are_old() -> None:
    today = date(2026, 12, 1)
    assert acceptable_versions({"2020-02-02"}, today) == {"2020-02-02"}
    assert acceptable_versions({"2021-01-01", "2023-01-01"}, today) == {"2023-01-01"}


def test_age_rule_boundaries() -> None:
    newest = date(2026, 1, 1)
    old = newest - timedelta(days=400)
    versions = {old.isoformat(), newest.isoformat()}
    at_limit = old + timedelta(days=MAX_AGE_DAYS)
    assert old.isoformat() in acceptable_versions(versions, at_limit)
    assert acceptable_versions(versions, at_limit + timedelta(days=1)) == {newest.isoformat()}
    # Until the newest has settled, the old one is the only acceptable choice.
    early = newest + timedelta(days=GRACE_DAYS - 1)
    assert acceptable_versions({newest.isoformat()}, early) == {newest.isoformat()}


def test_bicepconfig_keeps_the_age_rule_at_warning() -> None:
    # At error level the rule breaks `bicep build` the day a newer version leaves its grace
    # period; the test above fails first, with the version to move to.
    rules = json.loads((INFRA / "bicepconfig.json").read_text())["analyzers"]["core"]["rules"]
    assert rules["use-recent-api-versions"]["level"] == "warning"
