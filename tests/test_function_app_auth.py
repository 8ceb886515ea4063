"""Which requests the platform checks for a function key: read from the settings object once, and
fail closed: the ingest route is anonymous to the platform only when a bridge-side proof is listed
and `function` is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.stack import ROOT

# Indexed in a fresh interpreter, as the worker does at start-up, with only this setting changed.
PROBE = """
import json, function_app
functions = function_app.app.get_functions()
levels = {f.get_function_name(): str(f.get_trigger().auth_level) for f in functions
          if f.get_trigger().get_binding_name() == "httpTrigger"}
print(json.dumps({"default": str(function_app.app.auth_level), "levels": levels}))
"""


def index(mode: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k != "BRIDGE_AUTH_MODE"}
    if mode is not None:
        env["BRIDGE_AUTH_MODE"] = mode
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ("mode", "ingest"),
    [
        (None, "FUNCTION"),
        ("", "FUNCTION"),
        (" ", "FUNCTION"),
        ("function", "FUNCTION"),
        ("hmac", "ANONYMOUS"),
        ("certificate", "ANONYMOUS"),
        ("certificate,hmac", "ANONYMOUS"),
        ("certificate,function", "FUNCTION"),
        ("Certificate", "ANONYMOUS"),
        ("certficate", "FUNCTION"),  # a typo is not a proof: keys stay on
        (",", "FUNCTION"),
    ],
)
def test_ingest_needs_a_function_key_unless_a_bridge_proof_replaces_it(
    mode: str | None, ingest: str
) -> None:
    indexed = index(mode)
    assert indexed["default"].endswith("FUNCTION")
    levels = indexed["levels"]
    assert str(levels["ingest"]).endswith(ingest), indexed
    assert str(levels["health"]).endswith("ANONYMOUS"), indexed
