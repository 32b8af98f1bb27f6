"""Every systemd unit we ship passes ``systemd-analyze verify`` without a warning, and
every guard-run command line in the examples (units and crontab) is a valid one."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from guardd.cli.run import parse_args
from tests.helpers import BIN, require_tool

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
UNIT_SUFFIXES = (".service", ".timer", ".socket", ".path", ".target")
UNITS = sorted(p for p in SYSTEMD_DIR.rglob("*") if p.suffix in UNIT_SUFFIXES)
EXEC_LINE = re.compile(r"^(Exec[A-Za-z]*=)([-@:+!|]*)(\S+)(.*)$", re.MULTILINE)


def _existing_executable(path: str) -> str:
    """``path`` if it exists, else the same program from the venv or PATH (verify insists
    on executables that exist; the units name where an install puts them)."""
    if Path(path).exists():
        return path
    name = Path(path).name
    candidate = BIN / name
    if candidate.exists():
        return str(candidate)
    return shutil.which(name) or path


def _installable_copy(unit: Path, into: Path) -> Path:
    text = EXEC_LINE.sub(
        lambda m: f"{m[1]}{m[2]}{_existing_executable(m[3])}{m[4]}", unit.read_text()
    )
    copy = into / unit.name
    copy.write_text(text)
    return copy


def test_units_are_found() -> None:
    """The daemon's unit and the guard-run examples are all picked up."""
    names = {unit.name for unit in UNITS}
    assert {"shop-report.service", "shop-report.timer", "shop-worker.service"} <= names


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: str(p.relative_to(SYSTEMD_DIR)))
def test_unit_verifies_cleanly(unit: Path, tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit with no error and no warning."""
    analyze = require_tool("systemd-analyze")
    copies = [_installable_copy(u, tmp_path) for u in UNITS if u.parent == unit.parent]
    target = tmp_path / unit.name
    assert target in copies
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def _guard_run_lines() -> list[tuple[str, list[str]]]:
    """(where, argv after 'guard-run') for every guard-run command in the examples."""
    found = []
    for unit in UNITS:
        for match in EXEC_LINE.finditer(unit.read_text()):
            argv = shlex.split(match[3] + match[4])
            if Path(argv[0]).name == "guard-run":
                found.append((f"{unit.name}: {match[1]}", argv[1:]))
    crontab = SYSTEMD_DIR / "examples" / "crontab"
    for number, line in enumerate(crontab.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        argv = shlex.split(line)[6:]  # five time fields, then the user column
        assert Path(argv[0]).name == "guard-run", f"crontab:{number}: {line}"
        found.append((f"crontab:{number}", argv[1:]))
    return found


def test_example_guard_run_command_lines_are_valid() -> None:
    """Every guard-run invocation in the examples parses; the patterns the docs promise
    (ExecCondition --check, a --when-on wait --interrupt worker) are there."""
    lines = _guard_run_lines()
    parsed = {where: parse_args(argv, {}) for where, argv in lines}
    assert len(parsed) >= 6
    conditions = [o for w, o in parsed.items() if "ExecCondition=" in w]
    assert conditions and all(o.check and o.scope == "shop" for o in conditions)
    assert any(o.when_on == "wait" and o.interrupt for o in parsed.values())
    assert any(w.startswith("crontab") for w in parsed)


def _unit_dir_with_dropin(into: Path) -> Path:
    """guardd.service (runnable ExecStart) and the example drop-in, as systemd finds them."""
    unit_dir = into / "units"
    dropin_dir = unit_dir / "guardd.service.d"
    dropin_dir.mkdir(parents=True)
    _installable_copy(SYSTEMD_DIR / "guardd.service", unit_dir)
    shutil.copy(SYSTEMD_DIR / "examples" / "guardd.service.d" / "hooks.conf", dropin_dir)
    return unit_dir


def test_example_dropin_verifies_cleanly(tmp_path: Path) -> None:
    """guardd.service with the example drop-in (hooks.conf) passes ``systemd-analyze
    verify`` with no warning: every key of the drop-in is one systemd knows."""
    analyze = require_tool("systemd-analyze")
    unit_dir = _unit_dir_with_dropin(tmp_path)
    result = subprocess.run(
        [analyze, "verify", "--man=no", "guardd.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/bin:/bin"},
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert "hooks.conf" not in result.stdout


def _exposure(analyze: str, unit: str, unit_dir: Path) -> float:
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"SYSTEMD_UNIT_PATH": f"{unit_dir}:", "PATH": "/usr/bin:/bin"},
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert found, result.stdout
    return float(found[1])


def test_guardd_unit_exposure_at_most_2(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the shipped guardd.service 2.0 or less (the
    system suite checks it again inside a booted Debian 12)."""
    analyze = require_tool("systemd-analyze")
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    _installable_copy(SYSTEMD_DIR / "guardd.service", unit_dir)
    assert _exposure(analyze, "guardd.service", unit_dir) <= 2.0


def test_guardd_unit_keeps_its_promises() -> None:
    """The unit's contract with the SPEC: Type=notify, a watchdog, reload by SIGHUP, no
    restart on a config error (2), the system-service call filter, the package's path."""
    text = (SYSTEMD_DIR / "guardd.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=2",
        "SystemCallFilter=@system-service",
        "ExecStart=/usr/bin/guardd --config /etc/guardd/config.yaml",
        "Documentation=file:/usr/share/doc/guardd/README.md",
    ):
        assert f"\n{line}\n" in text, line
