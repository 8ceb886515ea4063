"""The POSIX agent (agents/posix/compliance-agent.sh), run for real under dash and bash (and
BusyBox): it signs and shapes reports exactly as the test vectors say, delivers them to a real
host (HMAC, and a client certificate through a TLS-terminating front like App Service's), does
with each answer what agents/answer-vectors.json says (kept in order, done, or refused), never
strands its spool behind a foreign file or a crashed run's lock, and finds its own device id.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
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

from tests.agent_vectors import (
    ANSWER_FILE,
    ANSWERS,
    REJECTED_URLS,
    URLS,
    VECTORS,
    Answer,
    UrlCase,
    Vector,
)
from tests.certs import trusted
from tests.stack import DEVICE, ROOT, SCRIPT, Emulator, HostFactory, StorageView, wait_for

AGENT = ROOT / "agents" / "posix" / "compliance-agent.sh"
SHELLS = ["dash", "bash"]
EXIT_BUSY = 4
SPOOL_NAMES = json.loads(ANSWER_FILE.read_text())["spoolNames"]
TRIALS = int(os.environ.get("AGENT_RACE_TRIALS", "8"))  # concurrent-run trials per shell
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

    def command(self) -> list[str]:
        """The agent's command line with this device's config file ("busybox" runs its sh)."""
        shell = [str(shutil.which("busybox")), "sh"] if self.shell == "busybox" else [self.shell]
        return [*shell, str(AGENT), "-c", str(self.home / "agent.conf")]

    def __call__(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.command(), *args],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def spooled(self) -> list[str]:
        """Report file names in the order the agent sends them (lexical = creation)."""
        return sorted(p.name for p in self.spool.glob("*.json") if p.name != "status.json")

    def status(self) -> dict[str, Any]:
        """The status.json the agent writes beside its spool after each run."""
        return json.loads((self.spool / "status.json").read_text())

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
                "AGENT_LOCK_DIR": str(home / "run"),
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
    path: str = ""


class ScriptedBridge:
    """Answers each POST with the next scripted (status, headers, body); 202 when none is left.
    Any other method is recorded in `others` and answered 405 (an agent never sends one).
    """

    def __init__(
        self, answers: list[tuple[int, dict[str, str], dict[str, Any]]], delay: float = 0
    ) -> None:
        self.answers = list(answers)
        self.seen: list[Seen] = []
        self.others: list[str] = []
        self.lock = threading.Lock()
        bridge = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                bridge.others.append(f"{self.command} {self.path}")
                self.send_error(405)

            do_HEAD = do_PUT = do_DELETE = do_GET

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                with bridge.lock:
                    bridge.seen.append(
                        Seen(
                            time.monotonic(),
                            time.time(),
                            dict(self.headers.items()),
                            body,
                            self.path,
                        )
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

    def start(
        *answers: tuple[int, dict[str, str], dict[str, Any]], delay: float = 0
    ) -> ScriptedBridge:
        servers.append(ScriptedBridge(list(answers), delay))
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


def test_a_wrong_secret_keeps_the_report_and_a_rotation_with_two_secrets_delivers_it(
    make_agent: AgentFactory, start_host: HostFactory, emulators: tuple[Emulator, Emulator]
) -> None:
    """401 is kept (a secret or clock being fixed lets a resend pass), and during a rotation
    the agent signs with the old and the new secret, so either bridge setting accepts it."""
    graph, _ = emulators
    host = start_host(BRIDGE_AUTH_MODE="hmac", BRIDGE_HMAC_SECRETS=SECRET)
    agent = make_agent()
    stranger = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    agent.configure(AGENT_BRIDGE_URL=host.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=stranger)
    done = agent("run", "--", str(agent.detection_script("{}")))
    assert done.returncode == SPOOLED, done.stderr
    assert "401 urn:intune-compliance-bridge:problem:signature-invalid" in done.stderr
    assert "kept in the spool for a later run" in done.stderr
    assert len(agent.spooled()) == 1
    assert graph.requests() == []
    agent.configure(
        AGENT_BRIDGE_URL=host.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=f"{stranger} {SECRET}"
    )
    done = agent("flush")
    assert done.returncode == 0, done.stderr
    assert agent.spooled() == []
    [state] = graph.states()
    assert state["runStateId"] == RUN_STATE


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
    assert [name.split(".", 2)[2] for name in agent.spooled()] == ["report-2.json", "report-3.json"]


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


# --- the answer contract (agents/answer-vectors.json) --------------------------------------------

ANSWERS_BY_NAME = [pytest.param(a, id=a.name) for a in ANSWERS]
ACTION_EXIT = {"done": 0, "refused": REFUSED, "keep": SPOOLED}


def submit(agent: Agent, report_id: str, **env: str) -> subprocess.CompletedProcess:
    """Hand the agent one finished script result, as Intune's wrapper would."""
    output = agent.home / f"{report_id}.out"
    output.write_text('{"ok":true}')
    return agent("submit", "-r", report_id, str(output), **env)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("answer", ANSWERS_BY_NAME)
def test_each_answer_is_handled_as_the_vectors_say(
    shell: str, answer: Answer, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted(
        (
            answer.status,
            {"Location": "/elsewhere"} if 300 <= answer.status < 400 else {},
            {"type": answer.type, "status": answer.status} if answer.type else {},
        )
    )
    agent = make_agent(shell)
    url = closed_port_url() if answer.status == 0 else bridge.url
    agent.configure(AGENT_BRIDGE_URL=url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    done = submit(agent, "answer-1", AGENT_MAX_ATTEMPTS="1")
    assert done.returncode == ACTION_EXIT[answer.action], done.stderr
    assert len(agent.spooled()) == (1 if answer.action == "keep" else 0), answer.why
    assert len(bridge.seen) == (0 if answer.status == 0 else 1)
    assert bridge.others == []  # a redirect is never followed, so never turned into a GET


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("case", [pytest.param(u, id=u.bridge_url) for u in URLS])
def test_the_ingest_url_is_built_as_the_vectors_say(
    shell: str, case: UrlCase, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted()
    configured, expected = case.at(bridge.url)
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=configured, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    done = submit(agent, "url-1")
    assert done.returncode == 0, done.stderr
    [seen] = bridge.seen
    assert bridge.url + seen.path == expected


@pytest.mark.parametrize("configured", REJECTED_URLS)
def test_a_bridge_url_that_is_not_https_is_refused_at_start(
    configured: str, make_agent: AgentFactory
) -> None:
    agent = make_agent()
    agent.configure(AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    done = submit(agent, "url-2", AGENT_BRIDGE_URL=configured)
    assert done.returncode == 2
    assert agent.spooled() == []


def spool_offline(agent: Agent, *report_ids: str) -> None:
    """Reports made while the bridge cannot be reached: each stays in the spool."""
    for report_id in report_ids:
        done = submit(agent, report_id, AGENT_BRIDGE_URL=closed_port_url())
        assert done.returncode == SPOOLED, done.stderr


def sent_ids(bridge: ScriptedBridge) -> list[str]:
    return [json.loads(s.body)["reportId"] for s in bridge.seen]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_404_keeps_the_report_and_a_later_202_delivers_it(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    """The app is not deployed yet (or the URL is being fixed): nothing is lost meanwhile."""
    bridge = scripted((404, {}, {}))
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    first = submit(agent, "r-404-1")
    assert first.returncode == SPOOLED, first.stderr
    assert len(bridge.seen) == 1  # a 404 is not retried within the run
    second = submit(agent, "r-404-2")
    assert second.returncode == 0, second.stderr
    assert sent_ids(bridge) == ["r-404-1", "r-404-1", "r-404-2"]
    assert agent.spooled() == []


@pytest.mark.parametrize("shell", SHELLS)
def test_a_502_graph_report_leaves_the_spool_and_the_next_ones_go_in_the_same_run(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    agent = make_agent(shell)
    agent.configure(AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    spool_offline(agent, "r-1", "r-2")
    bridge = scripted((502, {}, problem(502, "graph-not-found")))
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    done = submit(agent, "r-3")
    assert done.returncode == 0, done.stderr
    assert sent_ids(bridge) == ["r-1", "r-2", "r-3"]
    assert agent.spooled() == []
    assert "Graph refused it for good" in done.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_kept_reports_stay_in_order_behind_the_first_and_are_sent_once_each(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted((401, {}, problem(401, "signature-invalid")), (403, {}, {}), (429, {}, {}))
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    for n, expected in ((1, SPOOLED), (2, SPOOLED), (3, SPOOLED), (4, 0)):
        done = submit(agent, f"k-{n}", AGENT_MAX_ATTEMPTS="1")
        assert done.returncode == expected, done.stderr
    assert sent_ids(bridge) == ["k-1", "k-1", "k-1", "k-1", "k-2", "k-3", "k-4"]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_report_past_the_age_cap_is_dropped_loudly_with_exit_3(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    agent = make_agent(shell)
    agent.configure(AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET, AGENT_MAX_AGE="2")
    spool_offline(agent, "old-1")
    time.sleep(3.2)
    bridge = scripted()
    agent.configure(
        AGENT_BRIDGE_URL=bridge.url,
        AGENT_DEVICE_ID=DEVICE,
        AGENT_HMAC_SECRET=SECRET,
        AGENT_MAX_AGE="2",
    )
    done = agent("flush")
    assert done.returncode == REFUSED, done.stderr
    assert "report old-1 DROPPED UNDELIVERED" in done.stderr
    assert "past AGENT_MAX_AGE=2" in done.stderr
    assert bridge.seen == []
    assert agent.spooled() == []
    assert "too old" in agent.status()["lastRefusal"]


# --- the spool and its locks ---------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_foreign_files_in_the_spool_are_ignored(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted()
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    agent.spool.mkdir()
    foreign = {
        "zz-notes.json": "{}",
        "backup.json": "not json",
        "0000000009-x.json.bak": "",
        ".DS_Store": "",
        "9999999999.json": "{}",
    }
    for case in SPOOL_NAMES:  # the foreign names of agents/answer-vectors.json too
        if not case["own"] and case["name"] != "status.json":
            foreign.setdefault(case["name"], "{}")
    for name, content in foreign.items():
        (agent.spool / name).write_text(content)
    (agent.spool / "sub.json").mkdir()
    for n in (1, 2):
        done = submit(agent, f"f-{n}")
        assert done.returncode == 0, done.stderr
    assert sent_ids(bridge) == ["f-1", "f-2"]
    for name, content in foreign.items():
        assert (agent.spool / name).read_text() == content


@pytest.mark.parametrize("shell", SHELLS)
def test_a_1_0_lock_directory_without_a_pid_does_not_stall_the_spool(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    """Version 1.0 locked with directories in the spool; one left without its pid file made every
    later run report success without sending anything."""
    bridge = scripted()
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    (agent.spool / ".send.lock").mkdir(parents=True)
    done = submit(agent, "l-1")
    assert done.returncode == 0, done.stderr
    assert sent_ids(bridge) == ["l-1"]


def write_lock(agent: Agent, content: str, *, age: float = 0) -> Path:
    lock = agent.home / "run" / "send.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(content)
    if age:
        os.utime(lock, (time.time() - age, time.time() - age))
    return lock


BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@pytest.mark.parametrize("shell", SHELLS)
def test_a_lock_without_a_pid_waits_for_the_maximum_run_time_then_is_taken_over(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted()
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    lock = write_lock(agent, "")
    busy = submit(agent, "p-1", AGENT_MAX_RUN_SECONDS="10", AGENT_HTTP_TIMEOUT="5")
    assert busy.returncode == 4, busy.stderr  # "someone else is sending", never "sent"
    assert bridge.seen == [] and len(agent.spooled()) == 1
    os.utime(lock, (time.time() - 120, time.time() - 120))
    done = submit(agent, "p-2", AGENT_MAX_RUN_SECONDS="10", AGENT_HTTP_TIMEOUT="5")
    assert done.returncode == 0, done.stderr
    assert "took over send.lock: it names no process" in done.stderr
    assert sent_ids(bridge) == ["p-1", "p-2"]


@pytest.mark.parametrize("shell", SHELLS)
def test_a_lock_from_before_a_reboot_is_taken_over_even_if_its_pid_is_alive_again(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted()
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    # This test's own pid is alive: after a reboot, an unrelated process can hold the old pid.
    write_lock(agent, f"{os.getpid()} an-earlier-boot {int(time.time())} 00ff\n")
    done = submit(agent, "b-1")
    assert done.returncode == 0, done.stderr
    assert f"process {os.getpid()} held it before a reboot" in done.stderr
    # The same pid and this boot: a live run, so the next run leaves the spool to it.
    write_lock(agent, f"{os.getpid()} {BOOT_ID} {int(time.time())} 00ff\n")
    busy = submit(agent, "b-2")
    assert busy.returncode == 4, busy.stderr
    assert sent_ids(bridge) == ["b-1"]


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("shell", SHELLS)
def test_four_concurrent_runs_after_a_crash_send_every_report_exactly_once(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    """A crashed run left its locks (the 1.0 layout and this one) and two reports; four runs
    start at once, as a timer, a login hook and an administrator can. Repeated, since a race
    shows only sometimes."""
    bridge = scripted(delay=0.02)
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    expected: list[str] = []
    for trial in range(TRIALS):
        ids = [f"t{trial}-1", f"t{trial}-2"]
        spool_offline(agent, *ids)
        expected += ids
        crashed = dead_pid()
        for legacy in (agent.spool / ".send.lock", agent.spool / ".add.lock"):
            legacy.mkdir(exist_ok=True)
            (legacy / "pid").write_text(f"{crashed}\n")
        write_lock(agent, f"{crashed} {BOOT_ID} {int(time.time())} {os.urandom(8).hex()}\n")
        runs = [
            subprocess.Popen(
                [*agent.command(), "flush"],
                env=agent.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        results = [run.communicate(timeout=60) for run in runs]
        codes = sorted(run.returncode for run in runs)
        assert codes.count(0) >= 1 and set(codes) <= {0, EXIT_BUSY}, [e for _, e in results]
        assert agent.spooled() == []
    sent = sent_ids(bridge)
    assert sorted(sent) == sorted(expected)  # none twice, none lost


# --- BusyBox, escaping and the body cap ----------------------------------------------------------


def busybox_path(tmp: Path, *, musl_date: bool = False) -> str:
    """A PATH on which every tool is BusyBox's, as on Alpine, plus curl and openssl."""
    busybox = shutil.which("busybox")
    assert busybox, "busybox is missing: `make install` installs it"
    shim = tmp / ("musl-bin" if musl_date else "busybox-bin")
    shim.mkdir(exist_ok=True)
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        target = shim / applet
        if not target.exists():
            target.symlink_to(busybox)
    for tool in ("curl", "openssl"):
        found = shutil.which(tool)
        assert found
        (shim / tool).unlink(missing_ok=True)
        (shim / tool).symlink_to(found)
    if musl_date:
        # musl's strftime stops at an unknown conversion: "%3N" leaves "...:SS." and no zone.
        (shim / "date").unlink()
        (shim / "date").write_text(
            f'#!{busybox} sh\ncase "$*" in\n'
            f"  *%3N*) exec {busybox} date -u +%Y-%m-%dT%H:%M:%S. ;;\n"
            f'  *) exec {busybox} date "$@" ;;\nesac\n'
        )
        (shim / "date").chmod(0o755)
    return str(shim)


WELL_FORMED = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z"


@pytest.mark.parametrize("musl_date", [False, True], ids=["busybox-date", "musl-date"])
def test_under_busybox_timestamps_are_well_formed(
    musl_date: bool, make_agent: AgentFactory, scripted: BridgeFactory, tmp_path: Path
) -> None:
    bridge = scripted()
    agent = make_agent("busybox")
    agent.env["PATH"] = busybox_path(tmp_path, musl_date=musl_date)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    script = agent.detection_script('{"ok":true}')
    done = agent("run", "--", str(script))
    assert done.returncode == 0, done.stderr
    [report] = bridge.reports()
    for field_name in ("startedAt", "finishedAt"):
        assert re.fullmatch(WELL_FORMED, report["execution"][field_name]), report["execution"]


def test_under_busybox_an_http_date_retry_after_is_honoured(
    make_agent: AgentFactory, scripted: BridgeFactory, tmp_path: Path
) -> None:
    not_before = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    bridge = scripted(
        (503, {"Retry-After": format_datetime(not_before, usegmt=True)}, problem(503, "x"))
    )
    agent = make_agent("busybox")
    agent.env["PATH"] = busybox_path(tmp_path)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    output = agent.home / "out.json"
    output.write_text("{}")
    done = agent("submit", str(output))
    assert done.returncode == 0, done.stderr
    _, second = bridge.seen
    assert second.wall >= not_before.timestamp()


@pytest.mark.parametrize("shell", SHELLS)
def test_each_stream_is_capped_after_json_escaping(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    """Control characters grow sixfold when escaped: the cap bounds what is sent, and a cut never
    splits an escape or a UTF-8 character."""
    bridge = scripted()
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    stdout, stderr = agent.home / "stdout", agent.home / "stderr"
    stdout.write_bytes(b"\x01" * 1000 + b"end")
    stderr.write_bytes("é".encode() * 1000)
    done = agent("submit", "-x", "1", "-e", str(stderr), str(stdout), AGENT_MAX_OUTPUT_BYTES="1001")
    assert done.returncode == 0, done.stderr
    execution = bridge.reports()[0]["execution"]
    escaped_out = json.dumps(execution["stdout"], ensure_ascii=False)[1:-1].encode()
    escaped_err = json.dumps(execution["stderr"], ensure_ascii=False)[1:-1].encode()
    assert len(escaped_out) <= 1001 and escaped_out.endswith(b"\\u0001")
    assert execution["stdout"] == "\x01" * 166
    assert execution["stderr"] == "é" * 500  # 1001 bytes cannot end in half a character
    assert len(escaped_err) == 1000
    assert "stdout is 6003 bytes as JSON; sending the first 1001" in done.stderr


# --- health, identity, proxy ---------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_each_run_writes_a_summary_line_and_status_json_and_sends_its_version(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted((422, {}, problem(422, "invalid-report")))
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    refused = submit(agent, "h-1")
    assert refused.returncode == REFUSED
    status = agent.status()
    assert status["exitCode"] == REFUSED and status["lastSuccessAt"] is None
    assert "422 invalid-report report h-1" in status["lastRefusal"]
    spool_offline(agent, "h-2")
    status = agent.status()
    assert (status["exitCode"], status["spooled"]) == (SPOOLED, 1)
    assert 0 <= status["oldestReportAgeSeconds"] < 30
    done = submit(agent, "h-3")
    assert done.returncode == 0, done.stderr
    status = agent.status()
    assert (status["exitCode"], status["spooled"], status["oldestReportAgeSeconds"]) == (0, 0, None)
    assert re.fullmatch(WELL_FORMED, status["lastSuccessAt"])
    assert "422 invalid-report" in status["lastRefusal"]  # kept for the administrator
    assert status["version"] == "1.1.0" and status["deviceId"] == DEVICE
    [summary] = [line for line in done.stderr.splitlines() if " summary " in line]
    assert "version=1.1.0 exit=0" in summary and "spooled=0 oldest_age_s=none" in summary
    assert re.search(r"last_2xx=\S+Z last_refusal=\"[^\"]*422 invalid-report", summary)
    agents = {s.headers["User-Agent"] for s in bridge.seen}
    assert agents == {"intune-compliance-agent/1.1.0 (linux)"}


def test_the_summary_names_the_client_certificate_and_its_days_left(
    make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted()
    agent = make_agent()
    cert, key = trusted().leaf_with_key(DEVICE)
    write_pem(agent.home / "device", cert, key)
    agent.configure(
        AGENT_BRIDGE_URL=bridge.url,
        AGENT_DEVICE_ID=DEVICE,
        AGENT_HMAC_SECRET=SECRET,
        AGENT_CLIENT_CERT=str(agent.home / "device.crt"),
        AGENT_CLIENT_KEY=str(agent.home / "device.key"),
    )
    done = submit(agent, "c-1")
    assert done.returncode == 0, done.stderr
    thumbprint = cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 (a name, not security)
    # Whole days left; the agent counts in whole seconds, so a day boundary can fall between.
    days = agent.status()["certificate"]["daysLeft"]
    assert days - (cert.not_valid_after_utc - datetime.now(UTC)).days in (0, 1)
    assert agent.status()["certificate"]["sha1"] == thumbprint
    assert f"cert_sha1={thumbprint} cert_days_left={days}" in done.stderr


REGISTRATION = """\
account_hint = "{account}"
aad_device_hint = "{aad}"
device_hint = "{device}"
"""


def test_device_id_auto_on_linux_reads_the_newest_intune_registration(
    make_agent: AgentFactory, scripted: BridgeFactory, tmp_path: Path
) -> None:
    """Laid out as the Intune app writes ~/.config/intune/registration.toml (older builds) and
    ~/.local/state/intune/registration.toml (current builds); the newest one wins."""
    older = tmp_path / "alice" / ".config" / "intune" / "registration.toml"
    newer = tmp_path / "bob" / ".local" / "state" / "intune" / "registration.toml"
    stale_id, device_id = str(uuid.uuid4()), str(uuid.uuid4())
    for path, device in ((older, stale_id), (newer, device_id)):
        path.parent.mkdir(parents=True)
        path.write_text(REGISTRATION.format(account=uuid.uuid4(), aad=uuid.uuid4(), device=device))
    os.utime(older, (time.time() - 3600, time.time() - 3600))
    bridge = scripted()
    agent = make_agent()
    agent.configure(
        AGENT_BRIDGE_URL=bridge.url,
        AGENT_HMAC_SECRET=SECRET,
        AGENT_REGISTRATION_FILES=f"{older} {tmp_path / 'nobody' / 'registration.toml'} {newer}",
    )
    shown = agent("device-id")
    assert (shown.returncode, shown.stdout) == (0, device_id + "\n"), shown.stderr
    assert f"device id {device_id} from {newer}" in shown.stderr
    done = submit(agent, "d-1")
    assert done.returncode == 0, done.stderr
    assert bridge.reports()[0]["deviceId"] == device_id
    newer.write_text(REGISTRATION.format(account="a", aad="b", device="not-a-guid"))
    refused = agent("device-id")
    assert refused.returncode == 2
    assert "not a GUID: not-a-guid" in refused.stderr


def mdm_certificate(
    common_name: str, issuer: str, not_before: datetime, not_after: datetime
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )


def security_output(certs: list[x509.Certificate]) -> str:
    """`security find-certificate -a -Z -p` output: the two hashes, then the PEM, per item."""
    items = []
    for cert in certs:
        items.append(
            f"SHA-256 hash: {cert.fingerprint(hashes.SHA256()).hex().upper()}\n"
            f"SHA-1 hash: {cert.fingerprint(hashes.SHA1()).hex().upper()}\n"  # noqa: S303
            + cert.public_bytes(serialization.Encoding.PEM).decode()
        )
    return "".join(items)


def test_device_id_auto_on_macos_is_the_newest_valid_intune_mdm_certificate(
    make_agent: AgentFactory, tmp_path: Path
) -> None:
    """macOS itself cannot run here: `uname` and `security` are stand-ins that print what macOS
    prints, so the agent's own parsing and choosing run for real."""
    now = datetime.now(UTC)
    ca = "Microsoft Intune MDM Device CA"
    expected, older, expired, foreign = (str(uuid.uuid4()) for _ in range(4))
    day = timedelta(days=1)
    certs = [
        mdm_certificate(older, ca, now - 300 * day, now + 60 * day),
        mdm_certificate("Apple Root CA", "Apple Root CA", now - 900 * day, now + 900 * day),
        mdm_certificate(expected, ca, now - 10 * day, now + 355 * day),
        mdm_certificate(expired, ca, now - 5 * day, now - day),
        mdm_certificate(foreign, "Some Other CA", now - day, now + 30 * day),
    ]
    sample = tmp_path / "security.txt"
    sample.write_text(security_output(certs))
    shim = tmp_path / "macos-bin"
    shim.mkdir()
    (shim / "uname").write_text("#!/bin/sh\necho Darwin\n")
    (shim / "security").write_text(
        f'#!/bin/sh\n[ "$1 $2 $3 $4" = "find-certificate -a -Z -p" ] || exit 1\ncat "{sample}"\n'
    )
    for tool in ("uname", "security"):
        (shim / tool).chmod(0o755)
    agent = make_agent()
    agent.env["PATH"] = f"{shim}:{os.environ['PATH']}"
    shown = agent("device-id")
    assert (shown.returncode, shown.stdout) == (0, expected + "\n"), shown.stderr
    assert "from the System keychain's Intune MDM certificate" in shown.stderr


class ForwardProxy:
    """A plain HTTP forward proxy: it answers 407 until it has been asked `allow()`."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.allowing = False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.seen.append(self.path)
                if not proxy.allowing:
                    self.send_response(407)
                    self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "proxy-connection", "content-length")
                }
                answer = requests.post(self.path, data=body, headers=headers, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("shell", SHELLS)
def test_reports_go_through_the_configured_proxy_and_a_407_keeps_them(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted()
    proxy = ForwardProxy()
    try:
        agent = make_agent(shell)
        agent.configure(
            AGENT_BRIDGE_URL=bridge.url,
            AGENT_DEVICE_ID=DEVICE,
            AGENT_HMAC_SECRET=SECRET,
            AGENT_PROXY=proxy.url,
        )
        kept = submit(agent, "x-1")
        assert kept.returncode == SPOOLED, kept.stderr
        assert "407" in kept.stderr and bridge.seen == []
        proxy.allowing = True
        done = submit(agent, "x-2")
        assert done.returncode == 0, done.stderr
    finally:
        proxy.stop()
    assert sent_ids(bridge) == ["x-1", "x-2"]
    assert proxy.seen[-1] == bridge.url + "/api/v1/compliance-script-results"


def test_a_retry_after_a_run_could_not_wait_for_holds_later_runs_back(
    make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted((429, {"Retry-After": "3"}, problem(429, "rate-limited")))
    agent = make_agent()
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    first = submit(agent, "w-1", AGENT_MAX_RETRY_AFTER="1")
    assert first.returncode == SPOOLED, first.stderr
    assert agent.status()["retryNotBefore"] >= time.time() + 1
    second = submit(agent, "w-2")
    assert second.returncode == SPOOLED, second.stderr
    assert "the bridge asked to wait (Retry-After)" in second.stderr
    assert len(bridge.seen) == 1
    time.sleep(3.5)
    third = agent("flush")
    assert third.returncode == 0, third.stderr
    assert sent_ids(bridge) == ["w-1", "w-1", "w-2"]
    assert agent.status()["retryNotBefore"] == 0


@pytest.mark.parametrize("shell", SHELLS)
def test_a_report_spooled_by_agent_1_0_is_sent_first_and_aged_from_now(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    bridge = scripted()
    agent = make_agent(shell)
    agent.configure(AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=SECRET)
    agent.spool.mkdir()
    legacy = VECTORS[0]
    (agent.spool / f"0000000007-{legacy.webhook_id}.json").write_bytes(legacy.body_bytes)
    done = submit(agent, "n-1", AGENT_MAX_AGE="60")
    assert done.returncode == 0, done.stderr
    assert sent_ids(bridge) == [legacy.webhook_id, "n-1"]
    assert "from an older agent: its age is counted from now" in done.stderr


def test_under_busybox_locks_foreign_files_and_device_id_auto_work_alike(
    make_agent: AgentFactory, scripted: BridgeFactory, tmp_path: Path
) -> None:
    """BusyBox's find, ln, ls and awk, as on Alpine: the same takeovers and the same filtering."""
    bridge = scripted()
    agent = make_agent("busybox")
    agent.env["PATH"] = busybox_path(tmp_path)
    registration = tmp_path / "home" / ".local" / "state" / "intune" / "registration.toml"
    registration.parent.mkdir(parents=True)
    registration.write_text(REGISTRATION.format(account="a", aad=uuid.uuid4(), device=DEVICE))
    agent.configure(
        AGENT_BRIDGE_URL=bridge.url,
        AGENT_HMAC_SECRET=SECRET,
        AGENT_REGISTRATION_FILES=str(registration),
    )
    agent.spool.mkdir()
    (agent.spool / "zz-notes.json").write_text("{}")
    write_lock(agent, "", age=3600)
    first = submit(agent, "bb-1")
    assert first.returncode == 0, first.stderr
    assert "took over send.lock: it names no process" in first.stderr
    write_lock(agent, f"{os.getpid()} an-earlier-boot {int(time.time())} 00ff\n")
    second = submit(agent, "bb-2")
    assert second.returncode == 0, second.stderr
    assert "held it before a reboot" in second.stderr
    assert sent_ids(bridge) == ["bb-1", "bb-2"]
    assert {r["deviceId"] for r in bridge.reports()} == {DEVICE}
    assert (agent.spool / "zz-notes.json").read_text() == "{}"


@pytest.mark.parametrize("shell", SHELLS)
def test_with_two_secrets_each_attempt_carries_a_signature_for_each(
    shell: str, make_agent: AgentFactory, scripted: BridgeFactory
) -> None:
    """A rotation: the bridge may hold the old secret, the new one, or both."""
    old, new = VECTORS[0].secret, VECTORS[1].secret
    bridge = scripted()
    agent = make_agent(shell)
    agent.configure(
        AGENT_BRIDGE_URL=bridge.url, AGENT_DEVICE_ID=DEVICE, AGENT_HMAC_SECRET=f"{old} {new}"
    )
    done = submit(agent, "rot-1")
    assert done.returncode == 0, done.stderr
    [seen] = bridge.seen
    assert len(seen.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(seen.body, seen.headers)
    three = agent("flush", AGENT_HMAC_SECRET=f"{old} {new} {SECRET}")
    assert three.returncode == 2
    assert "at most two secrets" in three.stderr
