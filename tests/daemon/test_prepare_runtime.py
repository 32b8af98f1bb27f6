"""guardd --prepare-runtime (what guardd-runtime.service runs at boot, before cron), and
what a user outside the operators' group is told."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import command


def _config(tmp_path: Path, **settings: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def test_prepare_runtime_creates_every_configured_run_lock(tmp_path: Path) -> None:
    """Creates the runtime directory and a 0644 run lock per configured scope (default
    included), serves nothing and exits 0; run twice, it changes nothing."""
    runtime = tmp_path / "run" / "guardd"
    path = _config(
        tmp_path,
        lock_dir=str(tmp_path / "flags"),
        runtime_dir=str(runtime),
        scopes={"shop": {}, "blog": {}},
        http={"listen": []},
    )
    for _ in range(2):
        result = subprocess.run(
            [command("guardd"), "--config", str(path), "--prepare-runtime"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert sorted(os.listdir(runtime)) == ["blog.run", "default.run", "shop.run"]
        for name in os.listdir(runtime):
            assert stat.S_IMODE((runtime / name).stat().st_mode) == 0o644


def test_prepare_runtime_config_error_exits_2(tmp_path: Path) -> None:
    """A broken config: exit 2 with one line naming the key, no run lock created."""
    runtime = tmp_path / "run"
    path = _config(tmp_path, runtime_dir=str(runtime), scopes={"Bad Name": {}})
    result = subprocess.run(
        [command("guardd"), "--config", str(path), "--prepare-runtime"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert not runtime.exists()


def test_outsider_is_told_who_may_switch(tmp_short: Path) -> None:
    """A user who may not write the flag directory: exit 1 and one line that names the
    path, the error and the group whose members may switch maintenance."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run guardctl as nobody")
    tmp_short.chmod(0o755)
    lock_dir = tmp_short / "flags"
    lock_dir.mkdir(mode=0o755)
    path = _config(
        tmp_short,
        lock_dir=str(lock_dir),
        runtime_dir=str(tmp_short / "run"),
        scopes={"shop": {}},
        control={"group": "guardd-operators"},
        http={"listen": []},
    )
    path.chmod(0o644)
    prepare = [command("guardd"), "--config", str(path), "--prepare-runtime"]
    subprocess.run(prepare, check=True, timeout=30)
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    result = subprocess.run(
        [*as_nobody, command("guardctl"), "--config", str(path), "on", "shop"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr == (
        f"guardctl: cannot write {lock_dir}/shop.lock: Permission denied "
        "(root and members of the group guardd-operators may switch maintenance)\n"
    )
    assert not (lock_dir / "shop.lock").exists()
