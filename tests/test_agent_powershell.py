"""The Windows agent (agents/windows/IntuneComplianceAgent.ps1), checked without PowerShell.

What is executed here, and what is not (docs/agents.md says the same):
- Executed: the tree-sitter-powershell grammar over the whole script (no ERROR or MISSING node)
  and over a truncated copy (which it must flag); the statements of Get-WebhookSignature, read
  out of the script, each run through its Python transcription below, over every vector in
  agents/test-vectors.json.
- Not executed: PowerShell itself (it cannot be installed on this machine), so nothing else of the
  agent runs: not the certificate store, the detection script runner, ConvertTo-Json's body, the
  HTTP client, the spool or the mutexes. Those are checked only by their text below, and by review.

The transcription re-implements nothing on its own: the test first requires that the function's
body is exactly the PowerShell statements listed in TRANSCRIPTION, in order, and only then runs
each statement's Python counterpart. Change a statement in the .ps1 and this test fails until
its transcription is changed to match.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import tree_sitter_powershell
from tree_sitter import Language, Node, Parser

from tests.agent_vectors import VECTORS, Vector
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
        "Get-WebhookSignature -Secret $Config.HmacSecret -MessageId $ReportId "
        "-Timestamp $Timestamp -Body $Body"
    ) in attempt
    assert "$request.Headers.Add('webhook-id', $ReportId)" in attempt
    assert "$request.Headers.Add('webhook-timestamp', [string]$Timestamp)" in attempt
    loop = text("Send-SpooledReport")
    assert loop.index("[DateTimeOffset]::UtcNow.ToUnixTimeSeconds()") < loop.index(
        "Send-ReportAttempt -Body $body -ReportId $reportId -Timestamp $timestamp"
    )
    assert "$timestamp = $lastTimestamp + 1" in loop


def test_the_device_id_and_certificate_come_from_the_intune_mdm_certificate() -> None:
    source = " ".join(AGENT.read_text().split())
    assert "$IntuneDeviceCa = 'CN=Microsoft Intune MDM Device CA'" in source
    chooser = text("Get-IntuneDeviceCertificate")
    assert "Get-ChildItem -Path 'Cert:\\LocalMachine\\My'" in chooser
    assert "$_.Issuer -eq $IntuneDeviceCa -and $_.HasPrivateKey" in chooser
    assert "X509NameType]::SimpleName" in text("Get-IntuneDeviceId")
    assert "[void]$request.ClientCertificates.Add($Certificate)" in text("Send-ReportAttempt")


def test_refusals_drop_and_transient_failures_keep_the_report() -> None:
    loop = text("Send-SpooledReport")
    for transient in ("-eq 408", "-eq 429", "-ge 500", "-eq 0", ":signature-replayed"):
        assert transient in loop
    assert "Get-RetryAfterSeconds -Value $answer.RetryAfter" in loop
    parse = text("Get-RetryAfterSeconds")
    assert "[double]::TryParse" in parse  # integer and fractional seconds
    assert "TryParseExact($Value, 'r'" in parse  # the HTTP-date (RFC 1123)
    spool = text("Send-Spool")
    assert spool.index("if ($outcome -eq 'kept')") < spool.index("Remove-Item")
