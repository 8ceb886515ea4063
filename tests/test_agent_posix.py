"""The POSIX agent (agents/posix/compliance-agent.sh), run for real under dash and bash: it signs
and shapes reports exactly as the test vectors say, delivers them to a real host (HMAC, and a
client certificate through a TLS-terminating front like App Service's), keeps what it could not
send and sends it later once and in order, and never keeps a report the bridge refuses.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from standardwebhooks.webhooks import Webhook

from tests.agent_vectors import VECTORS, Vector
from tests.certs import trusted
from tests.stack import DEVICE, ROOT, SCRIPT, Emulator, HostFactory, StorageView, wait_for

AGENT = ROOT / "agents" / "posix" / "compliance-agent.sh"
SHELLS = ["dash", "bash"]
SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
RUN_STATE = f"{SCRIPT}:{DEVICE}"
SPOOLED, REFUSED = 75, 3


# --- running the agent ---------------------------------------------------------------------------


@dataclass
class Agent:
    """One device: a shell, a config file, a spool directory, and the settings a test varies."""

    shell: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def spool(self) -> Path:
        return self.home / "spool"

    @property
    def log_file(self) -> Path:
        return self.home / "agent.log"

    def configure(self, **settings: str) -> None:
        """Write the config file an administrator deploys (mode 600, KEY=value lines)."""
        config = self.home / "agent.conf"
        lines = [f"{key}={value}" for key, value in settings.items()]
        config.write_text("# written by the test\n" + "\n".join(lines) + "\n")
        config.chmod(0o600)

    def __call__(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.shell, str(AGENT), "-c", str(self.home / "agent.conf"), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spooled(self) -> list[str]:
        """Spool file names in the order the agent sends them (lexical = creation)."""
        return sorted(p.name for p in self.spool.glob("*.json"))

    def detection_script(self, body: str, *, exit_code: int = 0, stderr: str = "") -> Path:
        """An Intune-style detection script: JSON on stdout, its verdict in the exit code."""
        script = self.home / "detect.sh"
        script.write_text(
            f"#!/bin/sh\nprintf '%s\\n' '{body}'\nprintf '%s' '{stderr}' >&2\nexit {exit_code}\n"
        )
        script.chmod(0o755)
        return script


AgentFactory = Callable[..., Agent]


@pytest.fixture
def make_agent(tmp_path: Path) -> AgentFactory:
    """Agents with quick retries, so a failing attempt costs no test time unless asked for."""

    def make(shell: str = "dash") -> Agent:
        home = tmp_path / shell
        home.mkdir(exist_ok=True)
        agent = Agent(
            shell,
            home,
            {
                "PATH": os.environ["PATH"],
                "TMPDIR": str(tmp_path),
                "AGENT_SPOOL_DIR": str(home / "spool"),
                "AGENT_BACKOFF_BASE": "0",
                "AGENT_MAX_ATTEMPTS": "2",
                "AGENT_SCRIPT_ID": SCRIPT,
            },
        )
        agent.configure()
        return agent

    return make


def closed_port_url() -> str:
    """A URL where nothing listens: the bridge is down, or the device is offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- a scripted bridge stand-in, for what the real host never answers on cue ---------------------


@dataclass
class Seen:
    at: float  # monotonic, for gaps
    wall: float  # the clock an HTTP-date is read against
    headers: dict[str, str]
    body: bytes


class ScriptedBridge:
    """Answers each POST with the next scripted (status, headers, body); 202 when none is left."""

    def __init__(self, answers: list[tuple[int, dict[str, str], dict[str, Any]]]) -> None:
        self.answers = list(answers)
        self.seen: list[Seen] = []
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                bridge.seen.append(
                    Seen(time.monotonic(), time.time(), dict(self.headers.items()), body)
                )
                status, headers, answer = (
                    bridge.answers.pop(0)
                    if bridge.answers
                    else (202, {}, {"reportId": "x", "status": "queued"})
                )
                data = json.dumps(answer).encode()
                self.send_response(status)
                content_type = "application/problem+json" if status >= 400 else "application/json"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reports(self) -> list[dict[str, Any]]:
        return [json.loads(s.body) for s in self.seen]


BridgeFactory = Callable[..., ScriptedBridge]


@pytest.fixture
def scripted() -> Iterator[BridgeFactory]:
    servers: list[ScriptedBridge] = []

    def start(*answers: tuple[int, dict[str, str], dict[str, Any]]) -> ScriptedBridge:
        servers.append(ScriptedBridge(list(answers)))
        return servers[-1]

    yield start
    for server in servers:
        server.server.shutdown()
        server.server.server_close()


def problem(status: int, slug: str) -> dict[str, Any]:
    return {"type": f"urn:intune-compliance-bridge:problem:{slug}", "status": status}


# --- a TLS front like App Service's --------------------------------------------------------------


def write_pem(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


class TlsFront:
    """What App Service does in front of the app: terminate TLS, demand a client certificate,
    and pass it on to the app as base64 DER in `X-ARR-ClientCert` (a client's own is dropped).
    """

    def __init__(self, upstream: str, client_ca_pem: str, workdir: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridge.test")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        write_pem(workdir / "front", cert, key)
        self.ca_file = workdir / "front.crt"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(workdir / "front.crt", workdir / "front.key")
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=client_ca_pem)
        self.client_certs: list[bytes] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                der = self.connection.getpeercert(binary_form=True)  # type: ignore[attr-defined]
                front.client_certs.append(der)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                forwarded = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "x-arr-clientcert")
                }
                forwarded["X-ARR-ClientCert"] = base64.b64encode(der).decode()
                answer = requests.post(
                    upstream + self.path, data=body, headers=forwarded, timeout=30
                )
                self.send_response(answer.status_code)
                for header in ("Content-Type", "Retry-After"):
                    if header in answer.headers:
                        self.send_header(header, answer.headers[header])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- static checks and vectors -------------------------------------------------------------------


def test_the_agent_is_shellcheck_clean_as_posix_sh() -> None:
    assert shutil.which("shellcheck"), "shellcheck is missing: `make install` installs it"
    text = AGENT.read_text()
    assert "shellcheck disable" not in text  # nothing is skipped
    assert text.startswith("#!/bin/sh\n")
    done = subprocess.run(
        ["shellcheck", "--shell=sh", "--severity=style", str(AGENT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_signatures_reproduce_every_test_vector(shell: str, make_agent: AgentFactory) -> None:
    agent = make_agent(shell)
    for vector in VECTORS:
        body = agent.home / f"{vector.name}.json"
        body.write_bytes(vector.body_bytes)
        done = agent(
            "sign",
            vector.webhook_id,
            str(vector.timestamp),
            str(body),
            AGENT_HMAC_SECRET=vector.secret,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == vector.signature, vector.name


def submit_vector(agent: Agent, vector: Vector, url: str) -> subprocess.CompletedProcess:
    """Hand the agent a vector's observed result, as a wrapper that already ran the script would."""
    given = vector.input
    stdout, stderr = agent.home / "stdout", agent.home / "stderr"
    stdout.write_bytes(given["stdout"].encode())
    stderr.write_bytes(given["stderr"].encode())
    outcome = ["-T"] if given["timedOut"] else ["-x", str(given["exitCode"])]
    return agent(
        "submit", "-s", given["scriptId"], *outcome, "-e", str(stderr),
        "-S", given["startedAt"], "-F", given["finishedAt"], "-r", vector.webhook_id, str(stdout),
        AGENT_BRIDGE_URL=url, AGENT_DEVICE_ID=given["deviceId"], AGENT_HMAC_SECRET=vector.secret,
    )  # fmt: skip


@pytest.mark.parametrize("shell", SHELLS)
def test_request_bodies_reproduce_every_test_vector(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    agent, bridge = make_agent(shell), scripted()
    for vector in VECTORS:
        done = submit_vector(agent, vector, bridge.url)
        assert done.returncode == 0, done.stderr
        sent = bridge.seen[-1]
        assert sent.body == vector.body_bytes, vector.name
        assert sent.headers["webhook-id"] == vector.webhook_id
        # Signed with the current time, so it is checked, not compared: the library verifies it.
        Webhook(vector.secret).verify(sent.body, sent.headers)
    assert agent.spooled() == []


# --- end to end against the local stack ----------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_a_signed_report_is_queued_and_reaches_graph(
    shell: str,
    make_agent: AgentFactory,
    start_queue_host: HostFactory,
    emulators: tuple[Emulator, Emulator],
    storage: StorageView,
) -> None:
    graph, _ = emulators
    host = start_queue_host(BRIDGE_AUTH_MODE="hmac", BRIDGE_HMAC_SECRETS=SECRET)
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=host.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    script = agent.detection_script('{"BitLocker":"On"}')
    done = agent("run", "--", str(script))
    assert done.returncode == 0, done.stderr
    assert ": 202 queued" in done.stderr
    state = wait_for(
        lambda: next((s for s in graph.states() if s["runStateId"] == RUN_STATE), None)
    )
    assert state["scriptOutput"] == '{"BitLocker":"On"}'
    assert state["detectionState"] == "success"
    assert agent.spooled() == []


def test_a_resent_report_the_bridge_already_has_counts_as_delivered(
    make_agent: AgentFactory,
    start_queue_host: HostFactory,
    emulators: tuple[Emulator, Emulator],
    storage: StorageView,
) -> None:
    """The answer to the first send was lost: the resend is a duplicate, and that is success."""
    host = start_queue_host(BRIDGE_AUTH_MODE="hmac", BRIDGE_HMAC_SECRETS=SECRET)
    agent = make_agent()
    agent.configure(AGENT_BRIDGE_URL=host.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    output = agent.home / "out.json"
    output.write_text('{"BitLocker":"On"}')
    finished = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    send = ("submit", "-F", finished, "-r", "resent-report-1", str(output))
    first = agent(*send)
    assert first.returncode == 0, first.stderr
    assert ": 202 queued" in first.stderr
    again = agent(*send)
    assert again.returncode == 0, again.stderr
    assert ": 200 ignored (duplicate)" in again.stderr
    assert agent.spooled() == []


@pytest.mark.parametrize("shell", SHELLS)
def test_a_certificate_report_passes_a_tls_front_and_reaches_graph(
    shell: str,
    make_agent: AgentFactory,
    start_host: HostFactory,
    emulators: tuple[Emulator, Emulator],
) -> None:
    graph, _ = emulators
    pki = trusted()
    host = start_host(BRIDGE_AUTH_MODE="certificate", BRIDGE_TRUSTED_CA_CERTS=pki.bundle_pem)
    agent = make_agent(shell)
    front = TlsFront(host.url, pki.bundle_pem, agent.home)
    try:
        cert, key = pki.leaf_with_key(DEVICE)
        write_pem(agent.home / "device", cert, key)
        agent.configure(
            AGENT_BRIDGE_URL=front.url,
            AGENT_DEVICE_ID=DEVICE,
            AGENT_CLIENT_CERT=str(agent.home / "device.crt"),
            AGENT_CLIENT_KEY=str(agent.home / "device.key"),
            AGENT_CA_FILE=str(front.ca_file),
        )
        done = agent("run", "--", str(agent.detection_script('{"Firewall":"Off"}', exit_code=1)))
    finally:
        front.stop()
    assert done.returncode == 0, done.stderr
    assert ": 200 delivered" in done.stderr
    assert front.client_certs == [cert.public_bytes(serialization.Encoding.DER)]
    [state] = graph.states()
    assert state["runStateId"] == RUN_STATE
    assert state["detectionState"] == "fail"


@pytest.mark.parametrize("shell", SHELLS)
def test_offline_reports_are_spooled_then_delivered_once_in_order(
    shell: str,
    make_agent: AgentFactory,
    start_host: HostFactory,
    emulators: tuple[Emulator, Emulator],
) -> None:
    graph, _ = emulators
    agent = make_agent(shell)
    agent.configure(
        AGENT_BRIDGE_URL=closed_port_url(),
        AGENT_DEVICE_ID=DEVICE,
        AGENT_HMAC_SECRET=SECRET,
        AGENT_LOG_FILE=str(agent.log_file),
    )
    script = agent.home / "detect.sh"
    script.write_text('#!/bin/sh\nprintf \'{"run":%s}\\n\' "$RUN"\n')
    script.chmod(0o755)
    for run in (1, 2, 3):
        done = agent("run", "--", str(script), RUN=str(run))
        assert done.returncode == SPOOLED, done.stderr
        assert len(agent.spooled()) == run
    created = [json.loads((agent.spool / name).read_text())["reportId"] for name in agent.spooled()]

    host = start_host(BRIDGE_AUTH_MODE="hmac", BRIDGE_HMAC_SECRETS=SECRET)
    agent.configure(
        AGENT_BRIDGE_URL=host.url,
        AGENT_DEVICE_ID=DEVICE,
        AGENT_HMAC_SECRET=SECRET,
        AGENT_LOG_FILE=str(agent.log_file),
    )
    done = agent("run", "--", str(script), RUN="4")
    assert done.returncode == 0, done.stderr
    assert agent.spooled() == []
    writes = [r["body"]["scriptOutput"] for r in graph.requests() if r["method"] == "PATCH"]
    assert writes == ['{"run":1}', '{"run":2}', '{"run":3}', '{"run":4}']
    log = agent.log_file.read_text()
    sent = [line.split("report ")[1].split(":")[0] for line in log.splitlines() if ": 200 " in line]
    assert sent[:3] == created
    assert "remain in" in log and "for the next run" in log


# --- retries, refusals, the spool's bound, the script's own outcome ------------------------------


def test_a_report_the_bridge_refuses_is_logged_and_dropped_not_spooled(
    make_agent: AgentFactory, start_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    graph, _ = emulators
    host = start_host(BRIDGE_AUTH_MODE="hmac", BRIDGE_HMAC_SECRETS=SECRET)
    agent = make_agent()
    stranger = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    agent.configure(AGENT_BRIDGE_URL=host.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=stranger)
    done = agent("run", "--", str(agent.detection_script("{}")))
    assert done.returncode == REFUSED
    assert "refused: 401 urn:intune-compliance-bridge:problem:signature-invalid" in done.stderr
    assert "No webhook-signature matches a configured secret" in done.stderr  # the detail
    assert agent.spooled() == []
    assert graph.requests() == []


def test_retry_after_is_honoured_and_every_attempt_is_signed_anew(
    make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    not_before = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    bridge = scripted(
        (
            503,
            {"Retry-After": format_datetime(not_before, usegmt=True)},
            problem(503, "unavailable"),
        ),
        (429, {"Retry-After": "1"}, problem(429, "rate-limited")),
        (503, {"Retry-After": "0.6"}, problem(503, "unavailable")),
    )
    agent = make_agent()
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    done = agent("run", "--", str(agent.detection_script("{}")), AGENT_MAX_ATTEMPTS="4")
    assert done.returncode == 0, done.stderr
    _, second, third, fourth = bridge.seen
    assert second.wall >= not_before.timestamp()
    assert third.at - second.at >= 1.0
    assert fourth.at - third.at >= 0.6
    [report_id] = {s.headers["webhook-id"] for s in bridge.seen}
    assert {json.loads(s.body)["reportId"] for s in bridge.seen} == {report_id}
    stamps = [int(s.headers["webhook-timestamp"]) for s in bridge.seen]
    assert stamps == sorted(set(stamps))  # a new timestamp, so never a byte-identical replay
    for seen in bridge.seen:
        Webhook(SECRET).verify(seen.body, seen.headers)


def test_a_replay_refusal_is_answered_with_a_fresh_signature_not_a_drop(
    make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    """An earlier run sent this id in the same second: re-signing fixes it, dropping loses it."""
    bridge = scripted((401, {}, problem(401, "signature-replayed")))
    agent = make_agent()
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    done = agent("run", "--", str(agent.detection_script("{}")))
    assert done.returncode == 0, done.stderr
    first, second = bridge.seen
    assert first.body == second.body
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert agent.spooled() == []


def test_failures_back_off_with_jitter_a_bounded_number_of_times_then_keep_the_report(
    make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted(*[(500, {}, problem(500, "boom"))] * 3)
    agent = make_agent()
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    done = agent(
        "run", "--", str(agent.detection_script("{}")),
        AGENT_MAX_ATTEMPTS="3", AGENT_BACKOFF_BASE="1", AGENT_BACKOFF_MAX="60",
    )  # fmt: skip
    assert done.returncode == SPOOLED
    assert len(bridge.seen) == 3
    gaps = [b.at - a.at for a, b in zip(bridge.seen, bridge.seen[1:], strict=False)]
    # Base 1 s doubling, with equal jitter: the first wait is 0.5-1 s, the second 1-2 s.
    assert 0.5 <= gaps[0] < 1.5
    assert 1.0 <= gaps[1] < 2.5
    assert len(agent.spooled()) == 1
    assert "giving up for this run, kept in the spool" in done.stderr


def test_the_spool_drops_the_oldest_report_only_past_its_limit(make_agent: AgentFactory) -> None:
    agent = make_agent()
    agent.configure(
        AGENT_BRIDGE_URL=closed_port_url(), AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET
    )
    output = agent.home / "out.json"
    output.write_text("{}")
    logs = []
    for n in (1, 2, 3):
        done = agent("submit", "-r", f"report-{n}", str(output), AGENT_SPOOL_MAX="2")
        assert done.returncode == SPOOLED
        logs.append(done.stderr)
    assert "dropped" not in logs[0] + logs[1]
    assert "spool full (AGENT_SPOOL_MAX=2): dropped the oldest report report-1" in logs[2]
    assert [name.split("-", 1)[1] for name in agent.spooled()] == ["report-2.json", "report-3.json"]


def test_a_run_reports_the_exit_code_stderr_and_times_of_the_script(
    make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted()
    agent = make_agent()
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    before = datetime.now(UTC)
    script = agent.detection_script('{"Disk":"91%"}', exit_code=3, stderr="disk nearly full")
    done = agent("run", "--", str(script))
    assert done.returncode == 0, done.stderr
    [report] = bridge.reports()
    execution = report["execution"]
    assert execution["exitCode"] == 3
    assert execution["stdout"] == '{"Disk":"91%"}\n'
    assert execution["stderr"] == "disk nearly full"
    assert execution["timedOut"] is False
    started = datetime.fromisoformat(execution["startedAt"])
    finished = datetime.fromisoformat(execution["finishedAt"])
    assert before - timedelta(seconds=1) <= started <= finished <= datetime.now(UTC)
    assert (report["deviceId"], report["scriptId"]) == (DEVICE, SCRIPT)


def test_a_script_past_its_timeout_is_stopped_and_reported_as_timed_out(
    make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted()
    agent = make_agent()
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    script = agent.home / "hang.sh"
    script.write_text("#!/bin/sh\necho started\nsleep 30\n")
    script.chmod(0o755)
    began = time.monotonic()
    done = agent("run", "-t", "1", "--", str(script), timeout=20)
    assert time.monotonic() - began < 10
    assert done.returncode == 0, done.stderr
    [report] = bridge.reports()
    assert report["execution"]["timedOut"] is True
    assert report["execution"]["exitCode"] is None
    assert report["execution"]["stdout"] == "started\n"
