"""SPEC "One rule": guardd, guardctl (with and without guardd) and guard-run give the
same answer to "is scope S on?" for the same files, over a table of cases."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.etcd_helpers import EtcdCluster
from tests.helpers import command, free_port, wait_until
from tests.httpclient import get
from tests.robust.support import WrappedGuardd, run_as_nobody, tmpfs
from tests.run_helpers import NOBODY

SCOPES = ("default", "shop", "blog")
LARAVEL_DOWN = b'{"except":[],"redirect":null,"retry":60,"secret":"s3cret","status":503}\n'

Answer = dict[str, Any]  # scope -> its fields (state "on"/"off", and detail)


class Site(WrappedGuardd):
    """A guardd with an HTTP responder for scope shop on a port of its own."""

    http_port = 0


@dataclass
class Case:
    """Files to lay out, and what every tool must then say about each scope."""

    name: str
    setup: Callable[[Site], None]
    on: frozenset[str]
    fleet: bool = False
    as_nobody: bool = False
    # On a tmpfs: there an mtime can be out of range (ext4 clamps it to year 2446).
    on_tmpfs: bool = False
    # Fields guardd and guardctl must show for a scope that is on (beyond the state).
    detail: dict[str, dict[str, Any]] = field(default_factory=dict)


def _plain(daemon: Site) -> None:
    daemon.flag("shop").write_text('{"reason": "db move", "since": "2026-11-21T23:00:00Z"}\n')


def _default(daemon: Site) -> None:
    daemon.flag("default").write_text("host reboot\n")


def _mirror_left_over(daemon: Site) -> None:
    # A mirror from an earlier fleet setup: without fleet.endpoints it does not count.
    (daemon.lock_dir / "shop.fleet.lock").write_text('{"reason": "old fleet"}\n')


def _unreadable(daemon: Site) -> None:
    # The directory is root's, 0700: whether any flag in it exists cannot be known.
    daemon.lock_dir.chmod(0o700)
    os.chown(daemon.lock_dir, 0, 0)


def _bad_mtime(daemon: Site) -> None:
    flag = daemon.flag("shop")
    flag.write_text("")
    os.utime(flag, (3e11, 3e11))  # year 11476: `touch -d @300000000000`


def _dangling(daemon: Site) -> None:
    daemon.flag("shop").symlink_to(daemon.root / "nowhere")


def _lock_file(daemon: Site) -> None:
    down = blog_down(daemon)
    down.parent.mkdir(parents=True, exist_ok=True)
    down.write_bytes(LARAVEL_DOWN)
    os.utime(down, (1_800_000_000, 1_800_000_000))


def _nothing(daemon: Site) -> None:
    pass


CASES = [
    Case("nothing", _nothing, frozenset()),
    Case(
        "plain",
        _plain,
        frozenset({"shop"}),
        detail={"shop": {"reason": "db move", "since": "2026-11-21T23:00:00Z"}},
    ),
    Case("default on", _default, frozenset(SCOPES), detail={"blog": {"reason": "host reboot"}}),
    Case("leftover mirror", _mirror_left_over, frozenset()),
    Case(
        "unreadable lock dir",
        _unreadable,
        frozenset(SCOPES),
        as_nobody=True,
        detail={"shop": {"since": None, "reason": None}},
    ),
    Case(
        "mtime out of range",
        _bad_mtime,
        frozenset({"shop"}),
        on_tmpfs=True,
        detail={"shop": {"since": None}},
    ),
    Case("dangling symlink", _dangling, frozenset({"shop"})),
    Case(
        "lock_file",
        _lock_file,
        frozenset({"blog"}),
        detail={"blog": {"since": "2027-01-15T08:00:00Z", "reason": None}},
    ),
]


def blog_down(daemon: Site) -> Path:
    return daemon.root / "app" / "storage" / "framework" / "down"


@pytest.fixture
def site(tmp_short: Path) -> Iterator[Callable[..., Site]]:
    """Build a guardd (not started) with scopes shop and blog (an app's lock_file)."""
    made: list[Site] = []

    def factory(**extra: Any) -> Site:
        root = tmp_short / f"s{len(made)}"
        root.mkdir()
        port = free_port()
        settings = {
            "scopes": {
                "shop": None,
                "blog": {"lock_file": str(root / "app/storage/framework/down")},
            },
            "http": {"listen": [f"127.0.0.1:{port}"], "scope": "shop"},
            "poll_interval": "0.2",
            **extra,
        }
        daemon = Site(root, settings)
        daemon.http_port = port
        daemon.lock_dir.mkdir()
        made.append(daemon)
        return daemon

    yield factory
    for daemon in made:
        daemon.close()


def _prefix(case: Case) -> list[str]:
    if not case.as_nobody:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv is not None
    return [setpriv, f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]


def _env(daemon: Site) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GUARD_SCOPE", "GUARDD_CONFIG")}
    env["GUARDD_CONFIG"] = str(daemon.config_path)
    env["XDG_CACHE_HOME"] = str(daemon.root / "cache")
    return env


def guard_run(daemon: Site, case: Case) -> Answer:
    """``guard-run --check`` for every scope: 0 off, 1 on, anything else is a failure."""
    answers: Answer = {}
    for scope in SCOPES:
        result = subprocess.run(
            [*_prefix(case), command("guard-run"), "--check", "--scope", scope],
            env=_env(daemon),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode in (0, 1), (scope, result.returncode, result.stderr)
        answers[scope] = {"state": "on" if result.returncode == 1 else "off"}
    return answers


def guardctl(daemon: Site, case: Case, *, source: str) -> Answer:
    """``guardctl status --json``; ``source`` says whether guardd answered or the files."""
    result = subprocess.run(
        [*_prefix(case), command("guardctl"), "status", "--json"],
        env=_env(daemon),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["source"] == source, reply
    return _fields(reply["scopes"])


def from_guardd(daemon: Site) -> Answer:
    """guardd's own answers: the control socket's status, and HTTP /healthz (scope shop)."""
    answers = _fields(daemon.request({"op": "status"})["scopes"])
    health = get(daemon.http_port, "/healthz").status
    assert health == (503 if answers["shop"]["state"] == "on" else 200), (health, answers)
    return answers


def _fields(scopes: dict[str, Any]) -> Answer:
    return {
        scope: {
            "state": "off" if scopes[scope]["state"] == "off" else "on",
            "since": scopes[scope]["since"],
            "until": scopes[scope]["until"],
            "reason": scopes[scope]["reason"],
        }
        for scope in SCOPES
    }


def states(answer: Answer) -> dict[str, str]:
    return {scope: fields["state"] for scope, fields in answer.items()}


def check_detail(case: Case, answer: Answer) -> None:
    for scope, fields in case.detail.items():
        for name, value in fields.items():
            assert answer[scope][name] == value, (case.name, scope, name, answer[scope])


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_three_tools_agree(
    stack: contextlib.ExitStack, site: Callable[..., Site], case: Case
) -> None:
    """guard-run --check, guardctl status (without and with guardd), guardd's status and
    /healthz all say the same scopes are on, with the same since/until/reason."""
    daemon = site()
    if case.on_tmpfs:
        stack.enter_context(tmpfs(daemon.lock_dir))
    if case.as_nobody:
        run_as_nobody(daemon)
        os.chown(daemon.root, NOBODY.pw_uid, NOBODY.pw_gid)  # for guard-run's config cache
    case.setup(daemon)
    expected = {scope: "on" if scope in case.on else "off" for scope in SCOPES}

    without = guardctl(daemon, case, source="files")
    assert states(guard_run(daemon, case)) == expected
    assert states(without) == expected
    check_detail(case, without)

    daemon.start()
    wait_until(lambda: states(from_guardd(daemon)) == expected, what=f"guardd: {expected}")
    with_daemon = from_guardd(daemon)
    assert with_daemon == without
    assert guardctl(daemon, case, source="guardd") == without
    assert states(guard_run(daemon, case)) == expected


@pytest.fixture
def stack() -> Iterator[contextlib.ExitStack]:
    """Contexts (a tmpfs) left after the test's guardd is gone (fixtures end in reverse)."""
    with contextlib.ExitStack() as exits:
        yield exits


def test_fleet_mirror_agrees(site: Callable[..., Site], etcd: EtcdCluster) -> None:
    """With fleet.endpoints set, a fleet flag (mirrored into shop.fleet.lock by guardd)
    puts shop on for guardd, for guardctl with and without guardd, and for guard-run."""
    daemon = site(fleet={"endpoints": etcd.endpoints, "lease_ttl": 2, "prefix": "/agree"})
    case = Case("fleet", _nothing, frozenset({"shop"}), fleet=True)
    daemon.start()
    turned = subprocess.run(
        [command("guardctl"), "on", "shop", "--fleet", "--reason", "fleet work"],
        env=_env(daemon),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert turned.returncode == 0, turned.stderr
    expected = {"default": "off", "shop": "on", "blog": "off"}
    wait_until(lambda: states(from_guardd(daemon)) == expected, what="guardd: shop on")
    with_daemon = from_guardd(daemon)
    assert with_daemon["shop"]["reason"] == "fleet work"
    assert guardctl(daemon, case, source="guardd") == with_daemon
    assert states(guard_run(daemon, case)) == expected
    code, log = daemon.stop()
    assert code == 0, log
    assert (daemon.lock_dir / "shop.fleet.lock").exists()  # the mirror outlives guardd
    assert guardctl(daemon, case, source="files") == with_daemon
    assert states(guard_run(daemon, case)) == expected
