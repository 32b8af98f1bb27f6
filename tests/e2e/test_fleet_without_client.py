"""Fleet mode configured on a host without the etcd client (aetcd) installed: a
missing dependency is a configuration error, not an etcd outage."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.helpers import Guardd, command, free_port, wait_until

MakeGuardd = Callable[..., Guardd]

HINT = "pip install 'guardd[fleet]'"


def without_aetcd(daemon: Guardd, tmp_short: Path) -> dict[str, str]:
    """An environment where ``import aetcd`` fails as on a host without it: a module of
    that name first on the path that raises ImportError."""
    blocker = tmp_short / "no-aetcd"
    blocker.mkdir(exist_ok=True)
    (blocker / "aetcd.py").write_text("raise ImportError('No module named aetcd')\n")
    env = daemon.env
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker), env.get("PYTHONPATH")]))
    return env


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20, check=False)


def test_fleet_without_the_etcd_client_is_a_config_error_everywhere(
    make_guardd: MakeGuardd, tmp_short: Path
) -> None:
    """fleet.endpoints set, aetcd not importable: ``guardd --check-config``, guardd's
    start and guardctl's fleet commands exit 2 with one line giving the install hint
    (not "ready" with "etcd unreachable", not exit 4)."""
    daemon = make_guardd(
        {"scopes": {"shop": None}, "fleet": {"endpoints": [f"127.0.0.1:{free_port()}"]}}
    )
    env = without_aetcd(daemon, tmp_short)
    config = str(daemon.config_path)
    runs = {
        "check-config": run([command("guardd"), "--config", config, "--check-config"], env),
        "start": run([command("guardd"), "--config", config], env),
        "on --fleet": run([command("guardctl"), "on", "shop", "--fleet"], env),
        "off --fleet": run([command("guardctl"), "off", "shop", "--fleet"], env),
        "status --fleet": run([command("guardctl"), "status", "--fleet"], env),
    }
    for what, result in runs.items():
        assert result.returncode == 2, (what, result.returncode, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and HINT in lines[0], (what, result.stderr)
        assert "Traceback" not in result.stderr and "unreachable" not in result.stderr
    assert "READY=1" not in "".join(daemon.notify.collect())


def test_reload_adding_fleet_without_the_etcd_client_keeps_the_running_config(
    make_guardd: MakeGuardd, tmp_short: Path
) -> None:
    """A SIGHUP to a config that adds fleet.endpoints, aetcd not importable: the reload
    is refused with the install hint and the running configuration goes on."""
    daemon = make_guardd({"scopes": {"shop": None}})
    daemon.extra_env = {"PYTHONPATH": without_aetcd(daemon, tmp_short)["PYTHONPATH"]}
    daemon.start()
    daemon.settings["fleet"] = {"endpoints": [f"127.0.0.1:{free_port()}"]}
    daemon.write_config()
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: "reload failed" in daemon.log(), what="the refused reload")
    assert HINT in daemon.log() and "etcd unreachable" not in daemon.log()
    daemon.flag("shop").touch()
    wait_until(lambda: daemon.request({"op": "status"})["scopes"]["shop"]["state"] == "on")
