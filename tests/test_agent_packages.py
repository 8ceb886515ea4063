"""The agents' packages (agents/packaging), built by their own scripts and checked where they can
run here: the .deb is built with dpkg-deb, installed into a temporary root with `dpkg --root`,
its agent delivers a report, and a purge removes it; the systemd units pass
`systemd-analyze verify`; the macOS payload's LaunchDaemon parses with plistlib; the Windows
Win32 app's scheduled task parses as XML and its scripts with tree-sitter-powershell. Not run
here: pkgbuild, launchd, Task Scheduler, Intune (docs/agents.md, the pilot checklist).
"""

from __future__ import annotations

import json
import os
import plistlib
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.stack import DEVICE, ROOT, SCRIPT
from tests.test_agent_posix import SECRET, ScriptedBridge
from tests.test_agent_powershell import problems

PACKAGING = ROOT / "agents" / "packaging"
POSIX_AGENT = ROOT / "agents" / "posix" / "compliance-agent.sh"
WINDOWS_AGENT = ROOT / "agents" / "windows" / "IntuneComplianceAgent.ps1"
VERSION = re.search(r"^VERSION=(\S+)$", POSIX_AGENT.read_text(), re.MULTILINE).group(1)  # type: ignore[union-attr]


def build(script: Path, out: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["sh", str(script), str(out)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


def shellcheck(*paths: Path) -> None:
    done = subprocess.run(
        ["shellcheck", "--shell=sh", "--severity=style", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_the_build_scripts_and_maintainer_scripts_are_shellcheck_clean() -> None:
    linux, macos, windows = PACKAGING / "linux", PACKAGING / "macos", PACKAGING / "windows"
    shellcheck(
        linux / "build-deb.sh", linux / "postinst", linux / "prerm", linux / "postrm",
        macos / "build-pkg.sh", macos / "scripts" / "postinstall", windows / "build-win32.sh",
    )  # fmt: skip


def test_shell_files_are_kept_lf_by_gitattributes() -> None:
    for path in (
        POSIX_AGENT,
        PACKAGING / "linux" / "postinst",
        PACKAGING / "macos" / "build-pkg.sh",
    ):
        done = subprocess.run(
            ["git", "check-attr", "eol", "--", str(path.relative_to(ROOT))],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert done.stdout.strip().endswith("eol: lf"), done.stdout
        assert b"\r" not in path.read_bytes()


# --- Linux: the .deb and the systemd units -------------------------------------------------------


def dpkg(root: Path, *args: str) -> subprocess.CompletedProcess:
    """dpkg on a temporary root: maintainer scripts run outside a chroot with DPKG_ROOT set (the
    root has no /bin/sh), and curl/openssl are the host's, so dependencies are not checked."""
    return subprocess.run(
        ["dpkg", f"--root={root}", "--force-script-chrootless", "--force-depends",
         "--log=/dev/null", *args],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """The .deb, built by its script and installed into an empty root."""
    assert shutil.which("dpkg-deb"), "dpkg-deb is missing (Debian's dpkg package)"
    done = build(PACKAGING / "linux" / "build-deb.sh", tmp_path / "dist")
    deb = Path(done.stdout.strip())
    assert deb.name == f"intune-compliance-agent_{VERSION}_all.deb"
    info = subprocess.run(
        ["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True
    )
    assert "Package: intune-compliance-agent" in info.stdout
    assert f"Version: {VERSION}" in info.stdout
    root = tmp_path / "root"
    (root / "var" / "lib" / "dpkg" / "updates").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "info").mkdir()
    (root / "var" / "lib" / "dpkg" / "status").touch()
    done = dpkg(root, "-i", str(deb))
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_deb_installs_into_a_temporary_root_and_its_agent_delivers(
    installed: Path, tmp_path: Path
) -> None:
    status = dpkg(installed, "-s", "intune-compliance-agent")
    assert "Status: install ok installed" in status.stdout
    agent = installed / "usr" / "lib" / "intune-compliance-agent" / "compliance-agent.sh"
    config = installed / "etc" / "intune-compliance-agent" / "agent.conf"
    units = installed / "lib" / "systemd" / "system"
    assert agent.read_bytes() == POSIX_AGENT.read_bytes() and mode(agent) == 0o755
    assert mode(config) == 0o600 and mode(config.parent) == 0o700
    assert {p.name for p in units.iterdir()} == {
        "intune-compliance-agent.service",
        "intune-compliance-agent.timer",
    }
    conffiles = installed / "var" / "lib" / "dpkg" / "info" / "intune-compliance-agent.conffiles"
    assert conffiles.read_text().split() == ["/etc/intune-compliance-agent/agent.conf"]

    # The installed agent with the installed config, filled in as an administrator would.
    bridge = ScriptedBridge([])
    try:
        state = tmp_path / "state"
        settings = config.read_text()
        for key, value in {
            "AGENT_BRIDGE_URL": bridge.url,
            "AGENT_SCRIPT_ID": SCRIPT,
            "AGENT_HMAC_SECRET": SECRET,
            "AGENT_DEVICE_ID": DEVICE,
            "AGENT_SPOOL_DIR": str(state / "spool"),
            "AGENT_STATUS_FILE": str(state / "status.json"),
            "AGENT_LOCK_DIR": str(tmp_path / "run"),
        }.items():
            settings = re.sub(rf"^{key}=.*$", f"{key}={value}", settings, flags=re.MULTILINE)
        config.write_text(settings)
        output = tmp_path / "out.json"
        output.write_text('{"ok":true}')
        done = subprocess.run(
            ["sh", str(agent), "-c", str(config), "submit", str(output)],
            env={"PATH": os.environ["PATH"], "TMPDIR": str(tmp_path)},
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    finally:
        bridge.server.shutdown()
        bridge.server.server_close()
    assert done.returncode == 0, done.stderr
    assert [json.loads(s.body)["deviceId"] for s in bridge.seen] == [DEVICE]
    assert json.loads((state / "status.json").read_text())["exitCode"] == 0

    (installed / "var" / "lib" / "intune-compliance-agent").mkdir(parents=True)
    purged = dpkg(installed, "-P", "intune-compliance-agent")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not agent.exists() and not config.exists()
    assert not (installed / "var" / "lib" / "intune-compliance-agent").exists()  # postrm purge


def verify(units: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_the_installed_systemd_units_pass_systemd_analyze_verify(
    installed: Path, tmp_path: Path
) -> None:
    """Verified as installed, except that ExecStart names the agent inside the temporary root
    (verify checks that the command exists). systemd-analyze prints problems and exits 0, so
    its output must be empty; a broken copy shows that it is read."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is missing and `make install` could not install systemd")
    units = tmp_path / "units"
    units.mkdir()
    source = installed / "lib" / "systemd" / "system"
    service = (source / "intune-compliance-agent.service").read_text()
    agent_dir = "/usr/lib/intune-compliance-agent/"
    assert f"ExecStart=/bin/sh {agent_dir}compliance-agent.sh" in service
    (units / "intune-compliance-agent.service").write_text(
        service.replace(agent_dir, f"{installed}{agent_dir}")
    )
    shutil.copy(source / "intune-compliance-agent.timer", units)
    done = verify(sorted(units.iterdir()))
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    broken = tmp_path / "broken" / "intune-compliance-agent.service"
    broken.parent.mkdir()
    broken.write_text(service.replace("ProtectSystem=strict", "ProtectSystem=sometimes"))
    complaint = verify([broken])
    assert "ignoring: sometimes" in complaint.stdout + complaint.stderr


def unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_timer_and_service_say_what_a_fleet_needs() -> None:
    timer = unit_settings(PACKAGING / "linux" / "intune-compliance-agent.timer")
    assert timer["OnCalendar"] == ["*-*-* 00,08,16:00:00"]
    assert timer["Persistent"] == ["true"] and timer["RandomizedDelaySec"] == ["30min"]
    service = unit_settings(PACKAGING / "linux" / "intune-compliance-agent.service")
    assert service["StateDirectory"] == service["RuntimeDirectory"] == ["intune-compliance-agent"]
    assert service["RuntimeDirectoryPreserve"] == ["yes"]  # locks outlive one run, not a reboot
    assert service["SuccessExitStatus"] == ["4"]  # 3 and 75 must show as failed
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "read-only"), ("PrivateTmp", "yes")):  # fmt: skip
        assert service[key] == [value]
    config = (PACKAGING / "linux" / "agent.conf").read_text()
    assert "AGENT_SPOOL_DIR=/var/lib/intune-compliance-agent/spool" in config
    assert "AGENT_LOCK_DIR=/run/intune-compliance-agent" in config
    assert "AGENT_DEVICE_ID=auto" in config


# --- macOS: the pkg payload -----------------------------------------------------------------------


def test_the_macos_payload_has_the_agent_its_config_and_a_valid_launchdaemon(
    tmp_path: Path,
) -> None:
    build(PACKAGING / "macos" / "build-pkg.sh", tmp_path)
    payload = tmp_path / "payload"
    app = payload / "Library" / "Application Support" / "IntuneComplianceAgent"
    label = "com.intunecompliancebridge.agent"
    plist_file = payload / "Library" / "LaunchDaemons" / f"{label}.plist"
    assert (app / "compliance-agent.sh").read_bytes() == POSIX_AGENT.read_bytes()
    assert mode(app / "agent.conf") == 0o600 and mode(plist_file) == 0o644
    with plist_file.open("rb") as handle:
        daemon = plistlib.load(handle)  # what plutil -lint checks: a well-formed property list
    assert daemon["Label"] == label
    program = daemon["ProgramArguments"]
    assert program[0] == "/bin/sh" and program[4:6] == ["run", "--"]
    for installed_path in (program[1], program[3]):
        assert (payload / installed_path.lstrip("/")).is_file(), installed_path
    assert program[6] == "/Library/Application Support/IntuneComplianceAgent/detect.sh"
    assert [(i["Hour"], i["Minute"]) for i in daemon["StartCalendarInterval"]] == [
        (0, 17), (8, 17), (16, 17),
    ]  # fmt: skip
    assert daemon["RunAtLoad"] is False and "KeepAlive" not in daemon
    assert "UserName" not in daemon  # a LaunchDaemon runs as root
    postinstall = (tmp_path / "scripts" / "postinstall").read_text()
    assert 'launchctl bootstrap system "$daemon"' in postinstall
    assert f"{label}.plist" in postinstall and f"system/{label}" in postinstall
    assert mode(tmp_path / "scripts" / "postinstall") == 0o755


# --- Windows: the Win32 app -----------------------------------------------------------------------

TASK = "{http://schemas.microsoft.com/windows/2004/02/mit/task}"


def test_the_win32_app_layout_and_its_scheduled_task(tmp_path: Path) -> None:
    build(PACKAGING / "windows" / "build-win32.sh", tmp_path)
    app = tmp_path / "IntuneComplianceAgent"
    assert {p.name for p in app.iterdir()} == {
        "IntuneComplianceAgent.ps1",
        "install.ps1",
        "uninstall.ps1",
        "IntuneComplianceAgent.task.xml",
    }
    assert (app / "IntuneComplianceAgent.ps1").read_bytes() == WINDOWS_AGENT.read_bytes()
    for script in (app / "install.ps1", app / "uninstall.ps1", tmp_path / "detect.ps1"):
        source = script.read_bytes()
        assert source.isascii() and source.startswith(b"#Requires -Version 5.1\n"), script
        assert problems(source) == [], script
    detect = (tmp_path / "detect.ps1").read_text()
    assert f"$expected = '{VERSION}'" in detect  # the agent's version, written in by the build

    task = ET.parse(app / "IntuneComplianceAgent.task.xml").getroot()  # noqa: S314 (the repo's own file)

    def value(path: str) -> str | None:
        return task.findtext("/".join(TASK + part for part in path.split("/")))

    assert value("Principals/Principal/UserId") == "S-1-5-18"  # SYSTEM
    assert value("Triggers/CalendarTrigger/RandomDelay") == "PT30M"
    assert value("Triggers/CalendarTrigger/Repetition/Interval") == "PT8H"
    for setting, expected in (
        ("StartWhenAvailable", "true"),
        ("DisallowStartIfOnBatteries", "false"),
        ("StopIfGoingOnBatteries", "false"),
        ("MultipleInstancesPolicy", "IgnoreNew"),
        ("ExecutionTimeLimit", "PT30M"),
    ):
        assert value(f"Settings/{setting}") == expected, setting
    command = value("Actions/Exec/Command")
    # The task runs in the 64-bit service, so System32 is 64-bit Windows PowerShell.
    assert command == r"%SystemRoot%\System32\WindowsPowerShell\v1.0\powershell.exe"
    arguments = value("Actions/Exec/Arguments") or ""
    assert arguments.startswith("-NoProfile -NonInteractive -ExecutionPolicy Bypass -File ")
    assert arguments.endswith(r'"%ProgramData%\IntuneComplianceAgent\IntuneComplianceAgent.ps1"')
    install = (app / "install.ps1").read_text()
    assert "$xml.Replace('%ProgramData%', $env:ProgramData)" in install
    assert "Register-ScheduledTask -TaskName 'IntuneComplianceAgent' -Xml $xml -Force" in install
    assert (
        "Unregister-ScheduledTask -TaskName 'IntuneComplianceAgent'"
        in (app / "uninstall.ps1").read_text()
    )
