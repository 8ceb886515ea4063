"""The Windows agent (agents/windows/IntuneComplianceAgent.ps1), checked without PowerShell.

What is executed here, and what is not (docs/agents.md says the same):
- Executed: the tree-sitter-powershell grammar over the whole script (no ERROR or MISSING node)
  and over a truncated copy (which it must flag); the statements of the agent's pure functions,
  read out of the script, each run through its Python transcription below: Get-WebhookSignature
  over every vector in agents/test-vectors.json, ConvertTo-JsonString and New-ReportBody over the
  same vectors' bodies, Get-AnswerAction, Join-BridgeUrl and Get-SpoolEntry over
  agents/answer-vectors.json, which the POSIX agent is held to end to end.
- Not executed: PowerShell itself (it cannot be installed on this machine), so nothing else of the
  agent runs: not the certificate store or the registry, the detection script runner, the HTTP
  client, the proxy, the spool or the mutexes. Those are checked only by their text below, and by
  review; docs/agents.md has the pilot checklist for a Windows device.

A transcription re-implements nothing on its own: the test first requires that the function's
body is exactly the PowerShell statements listed in its transcription, in order, and only then
runs each statement's Python counterpart. Change a statement in the .ps1 and this test fails until
its transcription is changed to match.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from tests.agent_vectors import ANSWER_FILE, ANSWERS, REJECTED_URLS, URLS, VECTORS, Answer, Vector
from tests.stack import ROOT

AGENT = ROOT / "agents" / "windows" / "IntuneComplianceAgent.ps1"
PARSER = Parser(Language(tree_sitter_powershell.language()))


def problems(source: bytes) -> list[str]:
    """Every ERROR or MISSING node the grammar finds, with its line; empty means it parses."""
    found = []
    stack = [PARSER.parse(source).root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            found.append(f"line {node.start_point[0] + 1}: {node.type} {node.text[:60]!r}")
        stack.extend(node.children)
    return found


def function(name: str) -> Node:
    """The `function NAME { ... }` statement of the agent, found by the grammar."""
    stack = [PARSER.parse(AGENT.read_bytes()).root_node]
    while stack:
        node = stack.pop()
        if node.type == "function_statement":
            names = [c for c in node.children if c.type == "function_name"]
            if names and names[0].text.decode() == name:
                return node
        stack.extend(node.children)
    raise AssertionError(f"the agent has no function {name}")


def body_statements(node: Node) -> list[str]:
    """The statements after the param block, one string each with its whitespace collapsed."""
    [block] = [c for c in node.children if c.type == "script_block"]
    [body] = [c for c in block.children if c.type == "script_block_body"]
    [statements] = [c for c in body.children if c.type == "statement_list"]
    return [" ".join(s.text.decode().split()) for s in statements.named_children]


def text(name: str) -> str:
    return " ".join(function(name).text.decode().split())


# --- syntax --------------------------------------------------------------------------------------


def test_the_agent_parses_without_errors() -> None:
    assert problems(AGENT.read_bytes()) == []


def test_the_parse_check_catches_a_truncated_copy() -> None:
    source = AGENT.read_bytes()
    cut = source.index(b"function Send-ReportAttempt")
    truncated = source[: cut + 400]  # stops inside the function's body
    assert problems(truncated)


# PowerShell 6+ syntax and parameters that Windows PowerShell 5.1 does not know.
NOT_IN_WINDOWS_POWERSHELL = [
    r"&&", r"\|\|", r"\?\?", r"\?\.", r"-Parallel\b", r"-AsHashtable\b", r"-SkipCertificateCheck\b",
    r"-SkipHttpErrorCheck\b", r"-StatusCodeVariable\b", r"-ResponseHeadersVariable\b",
    r"-AsByteStream\b", r"\bJoin-String\b", r"\bTest-Json\b", r"\$Is(Windows|Linux|MacOS)\b",
    r"\bclean\s*\{", r"System\.Net\.Http\.",
]  # fmt: skip


def test_the_agent_uses_nothing_newer_than_windows_powershell_5_1() -> None:
    source = AGENT.read_text()
    used = [p for p in NOT_IN_WINDOWS_POWERSHELL if re.search(p, source)]
    assert used == []


# --- signing: the vectors through the function's own statements ----------------------------------

Scope = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One statement of Get-WebhookSignature and its Python transcription, call for call."""

    powershell: str
    python: Callable[[Scope], None]


def _key(v: Scope) -> None:
    # [Convert]::FromBase64String(...) of $Secret.Substring('whsec_'.Length)
    v["key"] = base64.b64decode(v["Secret"][len("whsec_") :], validate=True)


def _to_sign(v: Scope) -> None:
    # -f inserts its arguments verbatim; a [long] formats as plain digits in every culture.
    v["toSign"] = "{0}.{1}.{2}".format(v["MessageId"], v["Timestamp"], v["Body"])  # noqa: UP030 (as in the .ps1)


def _bytes(v: Scope) -> None:
    # Encoding.UTF8.GetBytes never writes a byte-order mark.
    v["bytes"] = v["toSign"].encode("utf-8")


def _hmac(v: Scope) -> None:
    v["hmac"] = hmac.new(v["key"], digestmod=hashlib.sha256)


def _hash(v: Scope) -> None:
    v["hmac"].update(v["bytes"])
    v["hash"] = v["hmac"].digest()


def _dispose(v: Scope) -> None:
    del v["hmac"]


def _output(v: Scope) -> None:
    # The statement's value is the function's output.
    v["output"] = "v1," + base64.b64encode(v["hash"]).decode("ascii")


TRANSCRIPTION = [
    Step("$key = [Convert]::FromBase64String($Secret.Substring('whsec_'.Length))", _key),
    Step("$toSign = '{0}.{1}.{2}' -f $MessageId, $Timestamp, $Body", _to_sign),
    Step("$bytes = [System.Text.Encoding]::UTF8.GetBytes($toSign)", _bytes),
    Step("$hmac = [System.Security.Cryptography.HMACSHA256]::new($key)", _hmac),
    Step("$hash = $hmac.ComputeHash($bytes)", _hash),
    Step("$hmac.Dispose()", _dispose),
    Step("'v1,' + [Convert]::ToBase64String($hash)", _output),
]  # fmt: skip


def check_transcription() -> None:
    """The function's body must be exactly the transcribed statements, in order."""
    statements = body_statements(function("Get-WebhookSignature"))
    assert statements == [step.powershell for step in TRANSCRIPTION]
    source = " ".join(statements)
    assert "[System.Security.Cryptography.HMACSHA256]" in source
    assert "'{0}.{1}.{2}' -f $MessageId, $Timestamp, $Body" in source
    assert "[System.Text.Encoding]::UTF8.GetBytes" in source
    assert "[Convert]::ToBase64String" in source


def test_the_signing_function_is_exactly_the_transcribed_statements() -> None:
    check_transcription()


def test_the_signing_function_takes_the_secret_id_timestamp_and_body_as_typed() -> None:
    signature = text("Get-WebhookSignature")
    for parameter in ("[string]$Secret", "[string]$MessageId", "[long]$Timestamp", "[string]$Body"):
        assert f"[Parameter(Mandatory)]{parameter}" in signature


def sign(vector: Vector) -> str:
    scope: Scope = {
        "Secret": vector.secret,
        "MessageId": vector.webhook_id,
        "Timestamp": vector.timestamp,
        "Body": vector.body,
    }
    for step in TRANSCRIPTION:
        step.python(scope)
    return scope["output"]


@pytest.mark.parametrize("vector", [pytest.param(v, id=v.name) for v in VECTORS])
def test_the_signing_statements_reproduce_each_test_vector(vector: Vector) -> None:
    check_transcription()  # never a stale transcription
    assert sign(vector) == vector.signature


# --- what the rest of the agent says, by its text (not executed) ---------------------------------


def test_each_attempt_signs_the_exact_text_it_sends_with_a_fresh_timestamp() -> None:
    attempt = text("Send-ReportAttempt")
    assert "$bytes = [System.Text.Encoding]::UTF8.GetBytes($Body)" in attempt
    assert "$stream.Write($bytes, 0, $bytes.Length)" in attempt
    assert (
        "Get-WebhookSignature -Secret $secret -MessageId $ReportId -Timestamp $Timestamp "
        "-Body $Body"
    ) in attempt
    assert "$request.Headers.Add('webhook-id', $ReportId)" in attempt
    assert "$request.Headers.Add('webhook-timestamp', [string]$Timestamp)" in attempt
    # A rotation: one v1 signature per secret, space-separated, as Standard Webhooks allows.
    assert "$request.Headers.Add('webhook-signature', (@($signatures) -join ' '))" in attempt
    assert "@($Value -split ' ' | Where-Object { $_ })" in text("Get-HmacSecrets")
    loop = text("Send-SpooledReport")
    assert loop.index("[DateTimeOffset]::UtcNow.ToUnixTimeSeconds()") < loop.index(
        "Send-ReportAttempt -Body $body -ReportId $reportId -Timestamp $timestamp"
    )
    assert "$timestamp = $lastTimestamp + 1" in loop


# --- pure functions: the shared vectors through their own statements ----------------------------


def script_value(name: str) -> str:
    """The literal a top-level `$name = ...` assignment of the script holds, as written."""
    found = re.search(rf"^\${name} = (.+)$", AGENT.read_text(), re.MULTILINE)
    assert found, name
    return found.group(1)


def run(steps: list[Step], scope: Scope) -> Any:
    """The transcribed statements in order; a `return` ends the function with its value."""
    for step in steps:
        step.python(scope)
        if "return" in scope:
            return scope["return"]
    return scope["output"]


def check(name: str, steps: list[Step]) -> None:
    assert body_statements(function(name)) == [step.powershell for step in steps], name


def refused_statuses() -> list[int]:
    return [int(n) for n in re.findall(r"\d+", script_value("RefusedStatuses"))]


def _slug(v: Scope) -> None:
    # -split takes a regex; [string]$null is "", whose split is [""].
    v["slug"] = re.split("[:/]", v["Type"] or "")[-1]


def _two_hundreds(v: Scope) -> None:
    if 200 <= v["Status"] < 300:
        v["return"] = "done"


def _graph(v: Scope) -> None:
    if v["Status"] == 502 and v["slug"].startswith("graph-"):
        v["return"] = "done"


def _refused(v: Scope) -> None:
    if v["Status"] in refused_statuses():
        v["return"] = "refused"


def _keep(v: Scope) -> None:
    v["output"] = "keep"


ANSWER_ACTION = [
    Step("$slug = ([string]$Type -split '[:/]')[-1]", _slug),
    Step("if ($Status -ge 200 -and $Status -lt 300) { return 'done' }", _two_hundreds),
    Step(
        "if ($Status -eq 502 -and $slug.StartsWith('graph-', [StringComparison]::Ordina"
        "l)) { return 'done' }",
        _graph,
    ),
    Step("if ($RefusedStatuses -contains $Status) { return 'refused' }", _refused),
    Step("'keep'", _keep),
]  # fmt: skip


def test_the_refused_statuses_are_the_contracts_four() -> None:
    assert script_value("RefusedStatuses") == "@(400, 413, 415, 422)"
    assert refused_statuses() == [400, 413, 415, 422]


@pytest.mark.parametrize("answer", [pytest.param(a, id=a.name) for a in ANSWERS])
def test_the_answer_statements_decide_each_answer_vector(answer: Answer) -> None:
    check("Get-AnswerAction", ANSWER_ACTION)
    assert run(ANSWER_ACTION, {"Status": answer.status, "Type": answer.type}) == answer.action


def ingest_path() -> str:
    return script_value("IngestPath").strip("'")


BRIDGE_URL_RULE = "^(https://.+|http://(127\\.0\\.0\\.1|localhost)([:/].*)?)$"


def _allowed(v: Scope) -> None:
    # -cnotmatch: case-sensitive, unanchored (the pattern anchors itself).
    if not re.search(BRIDGE_URL_RULE, v["BridgeUrl"]):
        v["return"] = None


def _trim(v: Scope) -> None:
    v["base"] = v["BridgeUrl"].rstrip("/")


def _has_path(v: Scope) -> None:
    if v["base"].endswith(ingest_path()):
        v["return"] = v["base"]


def _join(v: Scope) -> None:
    v["output"] = v["base"] + ingest_path()


JOIN_URL = [
    Step(f"if ($BridgeUrl -cnotmatch '{BRIDGE_URL_RULE}') {{ return $null }}", _allowed),
    Step("$base = $BridgeUrl.TrimEnd('/')", _trim),
    Step(
        "if ($base.EndsWith($IngestPath, [StringComparison]::Ordinal)) { return $base }",
        _has_path,
    ),
    Step("$base + $IngestPath", _join),
]  # fmt: skip


def test_the_ingest_path_is_the_agent_apis() -> None:
    assert ingest_path() == "/api/v1/compliance-script-results"


@pytest.mark.parametrize("case", [pytest.param(u, id=u.bridge_url) for u in URLS])
def test_the_url_statements_build_each_ingest_url_vector(case: Any) -> None:
    check("Join-BridgeUrl", JOIN_URL)
    configured, expected = case.at("https://bridge.test")
    assert run(JOIN_URL, {"BridgeUrl": configured}) == expected
    local, expected_local = case.at("http://127.0.0.1:7071")
    assert run(JOIN_URL, {"BridgeUrl": local}) == expected_local


@pytest.mark.parametrize("configured", REJECTED_URLS)
def test_the_url_statements_refuse_each_rejected_url(configured: str) -> None:
    check("Join-BridgeUrl", JOIN_URL)
    assert run(JOIN_URL, {"BridgeUrl": configured}) is None
    assert "if (-not (Join-BridgeUrl -BridgeUrl ([string]$Config.BridgeUrl)))" in text(
        "Test-AgentConfig"
    )


def json_escapes() -> dict[int, str]:
    return {int(k): v for k, v in re.findall(r"(\d+) = '([^']*)'", script_value("JsonEscapes"))}


def _builder(v: Scope) -> None:
    v["builder"] = []


def _quote(v: Scope) -> None:
    v["builder"].append('"')


def _each_char(v: Scope) -> None:
    # .NET chars are UTF-16 code units: one outside the BMP is two surrogates, both >= 0x20 and
    # appended raw, which gives the same string as appending the code point here.
    for char in v["Value"]:
        code = ord(char)
        if code == 0x22:
            v["builder"].append('\\"')
        elif code == 0x5C:
            v["builder"].append("\\\\")
        elif code >= 0x20:
            v["builder"].append(char)
        elif code in json_escapes():
            v["builder"].append(json_escapes()[code])
        else:
            v["builder"].append(f"\\u{code:04x}")


def _to_string(v: Scope) -> None:
    v["output"] = "".join(v["builder"])


JSON_STRING = [
    Step("$builder = New-Object System.Text.StringBuilder ($Value.Length + 2)", _builder),
    Step("[void]$builder.Append('\"')", _quote),
    Step(
        "foreach ($char in $Value.ToCharArray()) { $code = [int]$char if ($code -eq 0x22) "
        "{ [void]$builder.Append('\\\"') } elseif ($code -eq 0x5C) "
        "{ [void]$builder.Append('\\\\') } "
        "elseif ($code -ge 0x20) { [void]$builder.Append($char) } elseif "
        "($JsonEscapes.ContainsKey($code)) { [void]$builder.Append($JsonEscapes[$code]) } else "
        "{ [void]$builder.Append(('\\u{0:x4}' -f $code)) } }",
        _each_char,
    ),
    Step("[void]$builder.Append('\"')", _quote),
    Step("$builder.ToString()", _to_string),
]


def json_string(value: str | None) -> str:
    return run(JSON_STRING, {"Value": value or ""})  # a [string] parameter makes $null ""


def _exit_null(v: Scope) -> None:
    v["exit"] = "null"


def _exit_code(v: Scope) -> None:
    if v["Result"]["ExitCode"] is not None:
        v["exit"] = str(int(v["Result"]["ExitCode"]))


def _timed_out_false(v: Scope) -> None:
    v["timedOut"] = "false"


def _timed_out(v: Scope) -> None:
    if v["Result"]["TimedOut"]:
        v["timedOut"] = "true"


def _body(v: Scope) -> None:
    r = v["Result"]
    v["output"] = (
        '{"deviceId":' + json_string(v["DeviceId"]) + ',"scriptId":' + json_string(v["ScriptId"])
        + ',"reportId":' + json_string(v["ReportId"]) + ',"execution":{"exitCode":' + v["exit"]
        + ',"stdout":' + json_string(r["Stdout"]) + ',"stderr":' + json_string(r["Stderr"])
        + ',"startedAt":' + json_string(r["StartedAt"]) + ',"finishedAt":'
        + json_string(r["FinishedAt"]) + ',"timedOut":' + v["timedOut"] + "}}"
    )  # fmt: skip


REPORT_BODY = [
    Step("$exit = 'null'", _exit_null),
    Step(
        "if ($null -ne $Result.ExitCode) { $exit = ([long]$Result.ExitCode).ToString([G"
        "lobalization.CultureInfo]::InvariantCulture) }",
        _exit_code,
    ),
    Step("$timedOut = 'false'", _timed_out_false),
    Step("if ($Result.TimedOut) { $timedOut = 'true' }", _timed_out),
    Step(
        "'{\"deviceId\":' + (ConvertTo-JsonString $DeviceId) + ',\"scriptId\":' + (Conv"
        "ertTo-JsonString $ScriptId) + ',\"reportId\":' + (ConvertTo-JsonString $Report"
        "Id) + ',\"execution\":{\"exitCode\":' + $exit + ',\"stdout\":' + (ConvertTo-Js"
        "onString $Result.Stdout) + ',\"stderr\":' + (ConvertTo-JsonString $Result.Stde"
        "rr) + ',\"startedAt\":' + (ConvertTo-JsonString $Result.StartedAt) + ',\"finis"
        "hedAt\":' + (ConvertTo-JsonString $Result.FinishedAt) + ',\"timedOut\":' + $ti"
        "medOut + '}}'",
        _body,
    ),
]  # fmt: skip


def test_the_json_escapes_are_json_dumps_short_forms() -> None:
    assert json_escapes() == {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}


@pytest.mark.parametrize("vector", [pytest.param(v, id=v.name) for v in VECTORS])
def test_the_body_statements_reproduce_each_vector_body(vector: Vector) -> None:
    """The body is written by hand, not by ConvertTo-Json, which in 5.1 escapes ' < > & and
    U+2028 where the vectors (and the POSIX agent) keep them raw."""
    check("ConvertTo-JsonString", JSON_STRING)
    check("New-ReportBody", REPORT_BODY)
    given = vector.input
    result = {
        "ExitCode": given["exitCode"],
        "Stdout": given["stdout"],
        "Stderr": given["stderr"],
        "StartedAt": given["startedAt"],
        "FinishedAt": given["finishedAt"],
        "TimedOut": given["timedOut"],
    }
    scope = {
        "DeviceId": given["deviceId"],
        "ScriptId": given["scriptId"],
        "ReportId": vector.webhook_id,
        "Result": result,
    }
    assert run(REPORT_BODY, scope) == vector.body
    assert not re.search(r"ConvertTo-Json\b(?!String)", text("New-ReportBody"))


def test_every_string_json_dumps_would_write_is_written_the_same() -> None:
    """Each character below U+0800 and the two line separators, one by one."""
    check("ConvertTo-JsonString", JSON_STRING)
    for code in [*range(0x800), 0x2028, 0x2029, 0xFFFD]:
        char = chr(code)
        assert json_string(char) == json.dumps(char, ensure_ascii=False), hex(code)


def spool_name() -> str:
    return script_value("SpoolName").strip("'")


def _match(v: Scope) -> None:
    # .NET names a group (?<name>...), Python (?P<name>...); [regex]::Match is case-sensitive.
    v["match"] = re.search(spool_name().replace("(?<", "(?P<"), v["Name"])


def _no_match(v: Scope) -> None:
    if v["match"] is None:
        v["return"] = None


def _created_null(v: Scope) -> None:
    v["created"] = None


def _created(v: Scope) -> None:
    if v["match"].group("created") is not None:
        v["created"] = int(v["match"].group("created"))


def _entry(v: Scope) -> None:
    m = v["match"]
    v["output"] = {
        "sequence": int(m.group("seq")),
        "created": v["created"],
        "reportId": m.group("id"),
    }


SPOOL_ENTRY = [
    Step("$match = [regex]::Match($Name, $SpoolName)", _match),
    Step("if (-not $match.Success) { return $null }", _no_match),
    Step("$created = $null", _created_null),
    Step(
        "if ($match.Groups['created'].Success) { $created = [long]$match.Groups['create"
        "d'].Value }",
        _created,
    ),
    Step(
        "[pscustomobject]@{ Sequence = [long]$match.Groups['seq'].Value; Created = $cre"
        "ated; ReportId = $match.Groups['id'].Value }",
        _entry,
    ),
]  # fmt: skip

SPOOL_NAMES = json.loads(ANSWER_FILE.read_text())["spoolNames"]


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"][:40]) for c in SPOOL_NAMES])
def test_the_spool_statements_tell_the_agents_files_from_foreign_ones(case: dict[str, Any]) -> None:
    check("Get-SpoolEntry", SPOOL_ENTRY)
    entry = run(SPOOL_ENTRY, {"Name": case["name"]})
    if not case["own"]:
        assert entry is None
        return
    assert entry == {k: case[k] for k in ("sequence", "created", "reportId")}
    assert "Where-Object { Get-SpoolEntry -Name $_.Name }" in text("Get-SpooledReports")
    assert "(Get-SpoolEntry -Name $spooled[-1].Name).Sequence" in text("Add-SpooledReport")


# --- what the rest of the agent says, by its text (not executed) ---------------------------------


def test_the_script_declares_windows_powershell_5_1_and_is_ascii() -> None:
    source = AGENT.read_bytes()
    assert source.startswith(b"#Requires -Version 5.1\n#Requires -PSEdition Desktop\n")
    # Without a byte-order mark, 5.1 reads a script in the ANSI code page: ASCII reads the same.
    assert source.isascii()


def test_the_device_id_and_certificate_come_from_the_enrolments_mdm_certificate() -> None:
    source = " ".join(AGENT.read_text().split())
    assert "$IntuneDeviceCa = 'CN=Microsoft Intune MDM Device CA'" in source
    assert "$EnrollmentsKey = 'HKLM:\\SOFTWARE\\Microsoft\\Enrollments'" in source
    enrolled = text("Get-EnrolledThumbprints")
    assert "-Name 'DMPCertThumbPrint'" in enrolled
    assert "-match '^[0-9A-Fa-f]{40}$'" in enrolled  # the value is checked before it is used
    chooser = text("Get-IntuneDeviceCertificate")
    assert "Get-ChildItem -Path 'Cert:\\LocalMachine\\My'" in chooser
    assert "$_.HasPrivateKey -and $_.NotBefore -le $now -and $_.NotAfter -gt $now" in chooser
    # The enrolment's own certificate first, then agent 1.0's rule.
    assert chooser.index("$enrolled -contains $_.Thumbprint") < chooser.index(
        "$_.Issuer -eq $IntuneDeviceCa"
    )
    assert "$certificate.Thumbprint, $rule, $certificate.NotAfter" in chooser  # logged
    assert "X509NameType]::SimpleName" in text("Get-IntuneDeviceId")
    assert "[void]$request.ClientCertificates.Add($Certificate)" in text("Send-ReportAttempt")


def test_answers_follow_the_decision_and_redirects_are_never_followed() -> None:
    loop = text("Send-SpooledReport")
    assert "$action = Get-AnswerAction -Status $answer.Status -Type $type" in loop
    assert loop.index("if ($action -eq 'done')") < loop.index("Test-RetryNow")
    # The age cap is checked before anything is sent.
    assert loop.index("[long]$Config.MaxAgeSeconds") < loop.index("Send-ReportAttempt")
    assert "DROPPED UNDELIVERED" in loop
    retry = text("Test-RetryNow")
    for transient in ("-eq 0", "-eq 408", "-eq 429", "-ge 500", ":signature-replayed"):
        assert transient in retry
    attempt = text("Send-ReportAttempt")
    assert "$request.AllowAutoRedirect = $false" in attempt
    assert "Join-BridgeUrl -BridgeUrl $Config.BridgeUrl" in attempt
    assert "TrimEnd('/') + $IngestPath" not in attempt  # agent 1.0 doubled an ingest path
    parse = text("Get-RetryAfterSeconds")
    assert "[double]::TryParse" in parse  # integer and fractional seconds
    assert "TryParseExact($Value, 'r'" in parse  # the HTTP-date (RFC 1123)
    spool = text("Send-Spool")
    assert spool.index("if ($outcome -eq 'kept')") < spool.index("Remove-Item")
    assert "return $ExitBusy" in spool
    # A Retry-After this run could not wait for holds later runs back, up to an hour.
    assert "[Math]::Min($wait, 3600.0)" in loop
    assert spool.index("$State.RetryNotBefore -gt") < spool.index("Send-SpooledReport")


def test_the_exit_statuses_are_the_posix_agents() -> None:
    source = " ".join(AGENT.read_text().split())
    posix = (ROOT / "agents" / "posix" / "compliance-agent.sh").read_text()
    assert "EXIT_SENT=0 EXIT_USAGE=2 EXIT_DROPPED=3 EXIT_BUSY=4 EXIT_SPOOLED=75" in posix
    for name, value in (("ExitSent", 0), ("ExitConfiguration", 2), ("ExitDropped", 3),
                        ("ExitBusy", 4), ("ExitSpooled", 75)):  # fmt: skip
        assert f"${name} = {value}" in source


def test_proxy_user_agent_logging_config_and_script_output_fixes() -> None:
    source = " ".join(AGENT.read_text().split())
    assert '$UserAgent = "intune-compliance-agent/$AgentVersion (windows)"' in source
    attempt = text("Send-ReportAttempt")
    assert "$request.UserAgent = $UserAgent" in attempt
    assert "New-Object System.Net.WebProxy([string]$Config.Proxy, $true)" in attempt
    assert "$proxy.UseDefaultCredentials = [bool]$Config.ProxyUseDefaultCredentials" in attempt
    log = text("Write-AgentLog")
    assert "[System.IO.FileShare]'ReadWrite, Delete'" in log
    assert log.index("try {") < log.index("catch {")  # a line that cannot be written never throws
    config = text("Read-AgentConfig")
    assert "throw" not in config.replace('throw "the configuration file $Path does not exist"', "")
    assert "$unknown += $property.Name" in config
    assert "ignoring the unknown setting" in text("Invoke-Agent")
    runner = text("Invoke-DetectionScript")
    assert "[Console]::OutputEncoding = New-Object System.Text.UTF8Encoding `$false" in runner
    assert "-EncodedCommand $encoded" in runner
    assert "OEMCodePage" not in source
    assert "[System.IO.File]::ReadAllText($Path, $Utf8NoBom)" in text("Read-ScriptOutput")


def test_each_run_writes_a_summary_and_status_json() -> None:
    health = text("Write-AgentHealth")
    for name in ("version", "exitCode", "spooled", "oldestReportAgeSeconds", "lastSuccessAt",
                 "lastRefusal", "retryNotBefore", "certificate"):  # fmt: skip
        assert f"{name} " in health
    assert "summary version={0} exit={1}" in health
    assert 'Write-Output "compliance-agent: $line"' in health
