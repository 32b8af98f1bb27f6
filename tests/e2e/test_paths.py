"""SPEC "Paths never depend on who asks": cron and an operator's shell meet at the same
files whoever they are and whatever their environment, and created directories get
their modes whatever the umask."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import Guardd, command, wait_until
from tests.run_helpers import GUARD_RUN, NOBODY, as_nobody, open_to_nobody

# What cron gives a job (no XDG_* at all) and what a login shell has.
CRON_ENV = {"PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", "LOGNAME": "nobody"}
SHELL_EXTRA = {"XDG_RUNTIME_DIR": "/run/user/65534", "XDG_STATE_HOME": "/nowhere/state"}


def _checked_flags(env: dict[str, str], *, user: str) -> str:
    """The flags ``guard-run -v --check`` names, run as root or as nobody."""
    cmd = [GUARD_RUN, "-v", "--check"]
    result = subprocess.run(
        as_nobody(cmd) if user == "nobody" else cmd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    line = next(x for x in result.stderr.splitlines() if "no flag among" in x)
    return line.split("no flag among ", 1)[1].split(")", 1)[0]


def test_config_without_paths_means_system_paths_for_every_user(tmp_short: Path) -> None:
    """A config that leaves out lock_dir/runtime_dir: root's shell and a non-root cron
    job (other HOME, XDG_* set or not) check the same /var/lib/guardd flag; guardd and
    guardctl resolve the same paths (issue 11: www-data looked in ~/.local/state)."""
    config = tmp_short / "config.yaml"
    config.write_text(yaml.safe_dump({"node": "n", "http": {"listen": []}}))
    open_to_nobody(config)
    root_env = {**os.environ, "GUARDD_CONFIG": str(config), "HOME": "/root", **SHELL_EXTRA}
    root_env["XDG_CACHE_HOME"] = str(tmp_short / "root-cache")
    cron_env = {**CRON_ENV, "HOME": "/var/www", "GUARDD_CONFIG": str(config)}
    cron_env["XDG_CACHE_HOME"] = str(tmp_short / "nobody-cache")
    assert _checked_flags(root_env, user="root") == "/var/lib/guardd/default.lock"
    assert _checked_flags(cron_env, user="nobody") == "/var/lib/guardd/default.lock"
    shown = subprocess.run(
        as_nobody([command("guardd"), "--check-config"]),
        env=cron_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    effective = yaml.safe_load(shown)
    assert (effective["lock_dir"], effective["runtime_dir"]) == ("/var/lib/guardd", "/run/guardd")


@pytest.fixture
def nobody_home(tmp_short: Path) -> Path:
    """A home directory of nobody's own, and no config file anywhere."""
    if os.path.exists("/etc/guardd/config.yaml"):
        pytest.skip("this host has /etc/guardd/config.yaml: built-ins are not in use")
    home = tmp_short / "home"
    home.mkdir()
    os.chown(home, NOBODY.pw_uid, NOBODY.pw_gid)
    open_to_nobody(home)
    return home


def test_no_config_cron_job_and_operator_shell_share_run_locks(
    tmp_short: Path, nobody_home: Path
) -> None:
    """No config at all: a cron job (no XDG_RUNTIME_DIR) and the same user's shell (with
    XDG_RUNTIME_DIR) use the same run lock, so a drain waits for the job (issue 11: the
    drain returned 0 at once, the job running on under /tmp/guardd-UID)."""
    cron_env = {**CRON_ENV, "HOME": str(nobody_home)}
    shell_env = {**cron_env, **SHELL_EXTRA, "XDG_CACHE_HOME": str(nobody_home / ".cache")}
    job = subprocess.Popen(
        as_nobody([GUARD_RUN, "--", "sleep", "30"]),
        env=cron_env,
        start_new_session=True,
    )
    try:
        run_lock = nobody_home / ".local/state/guardd/run/default.run"
        wait_until(run_lock.exists, what="the job's run lock under $HOME")
        time.sleep(0.3)  # the lock taken, the command exec'd
        drain = subprocess.run(
            as_nobody([command("guardctl"), "on", "--wait", "--timeout", "1"]),
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert drain.returncode == 3, drain.stdout + drain.stderr
        assert str(job.pid) in drain.stdout
        assert (nobody_home / ".local/state/guardd/default.lock").exists()
    finally:
        os.killpg(job.pid, 9)
        job.wait()


def test_no_config_paths_never_in_tmp(tmp_short: Path, nobody_home: Path) -> None:
    """No config: guard-run creates its directories under $HOME, nothing in /tmp, even
    with no XDG_RUNTIME_DIR (issue 11: /tmp/guardd-UID, squattable by any local user)."""
    before = set(os.listdir("/tmp"))
    result = subprocess.run(
        as_nobody([GUARD_RUN, "-v", "--", "true"]),
        env={**CRON_ENV, "HOME": str(nobody_home)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    run_dir = nobody_home / ".local/state/guardd/run"
    assert f"holding run locks {run_dir}/default.run" in result.stderr
    assert not any(name.startswith("guardd-") for name in set(os.listdir("/tmp")) - before)


def _umask_077() -> None:
    os.umask(0o077)


def test_directories_get_their_modes_under_umask_077(tmp_short: Path) -> None:
    """Under root's umask 077, guardctl creates lock_dir 2775 and runtime_dir 0755 (group
    control.group), so a non-root job still runs (issue 11: 0700 dirs, every job exit 2)."""
    group = grp.getgrgid(NOBODY.pw_gid).gr_name
    base = tmp_short / "srv"
    settings = {
        "lock_dir": str(base / "lock"),
        "runtime_dir": str(base / "run"),
        "node": "n",
        "http": {"listen": []},
        "control": {"group": group},
    }
    config = tmp_short / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {**os.environ, "GUARDD_CONFIG": str(config), "XDG_CACHE_HOME": str(tmp_short / "c")}
    for args in (["on"], ["off"]):
        subprocess.run(
            [command("guardctl"), *args],
            env=env,
            preexec_fn=_umask_077,
            capture_output=True,
            check=True,
            timeout=30,
        )
    lock_dir, run_dir = os.stat(base / "lock"), os.stat(base / "run")
    assert lock_dir.st_mode & 0o7777 == 0o2775
    assert run_dir.st_mode & 0o7777 == 0o755
    assert lock_dir.st_gid == run_dir.st_gid == NOBODY.pw_gid
    assert os.stat(base).st_mode & 0o777 == 0o755  # a parent it had to create
    open_to_nobody(config)
    job = subprocess.run(
        as_nobody([GUARD_RUN, "--", "echo", "ran"]),
        env={**env, "XDG_CACHE_HOME": str(tmp_short / "nobody-cache")},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (job.returncode, job.stdout) == (0, "ran\n"), job.stderr


def test_guardd_creates_its_directories_with_modes_under_umask_077(tmp_short: Path) -> None:
    """guardd started under umask 077 creates lock_dir 2775 and runtime_dir 0755."""
    daemon = Guardd(tmp_short)
    old = os.umask(0o077)  # inherited by the guardd started below
    try:
        daemon.start()
    finally:
        os.umask(old)
        daemon.close()
    assert daemon.lock_dir.stat().st_mode & 0o7777 == 0o2775
    assert daemon.runtime_dir.stat().st_mode & 0o7777 == 0o755


DRAIN_SCRIPT = r"""
set -u
mount -t tmpfs -o size=8m,mode=755 guardd-test /run/guardd
install -m 0644 /dev/null /run/guardd/default.run  # as the package's tmpfiles.d entry does
cp "$CONFIG" /run/guardd/config.yaml && chmod 644 /run/guardd/config.yaml
# Empty /tmp and /var/lib, unless the checkout or the interpreter lives there.
[ "$COVER_TMP" = 1 ] && mount -t tmpfs -o size=8m,mode=1777 guardd-test /tmp
[ "$COVER_VAR_LIB" = 1 ] && mount -t tmpfs -o size=8m,mode=755 guardd-test /var/lib
export GUARDD_CONFIG=/run/guardd/config.yaml
env -i PATH=/usr/bin:/bin HOME=/var/www GUARDD_CONFIG=$GUARDD_CONFIG \
    setpriv --reuid=65534 --regid=65534 --clear-groups "$GUARD_RUN" -- sleep 30 &
job=$!
old=/tmp/guardd-65534/default.run  # where the job locked before the fix
i=0  # until the job holds a run lock (where it looks for one), 10 s at most
while flock -n -x /run/guardd/default.run true \
    && ! { [ -e $old ] && ! flock -n -x $old true; } \
    && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
XDG_RUNTIME_DIR=/run/user/0 HOME=/root "$GUARDCTL" on --wait --timeout 1 >/dev/null 2>&1
echo "drain=$?"
kill $job
"""


def test_config_without_paths_drain_waits_for_a_www_data_cron_job(tmp_short: Path) -> None:
    """A config leaving out lock_dir/runtime_dir: root's `guardctl on --wait` waits for a
    non-root cron job (exit 3 at the timeout), instead of returning 0 at once while it
    runs (issue 11). Run in a private mount namespace with empty /run/guardd, /var/lib
    and /tmp, so the system paths are real and the host's are never touched. (Not a
    tmpfs on all of /run: in this sandbox nobody then cannot exec the interpreter.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    if not os.path.isdir("/run/guardd"):
        pytest.skip("no /run/guardd to mount a private tmpfs on (/run itself cannot be)")
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("setpriv") is None:
        pytest.skip("needs unshare and setpriv (util-linux)")
    config = tmp_short / "config.yaml"
    config.write_text(yaml.safe_dump({"node": "n", "http": {"listen": []}}))
    # A tmpfs over a directory that holds the checkout (a CI clone in /tmp) or the
    # interpreter would hide the very commands under test.
    needed = [Path(GUARD_RUN).resolve(), Path(sys.executable).resolve(), Path.cwd().resolve()]

    def may_cover(directory: str) -> str:
        return "0" if any(path.is_relative_to(directory) for path in needed) else "1"

    env = {
        **os.environ,
        "CONFIG": str(config),
        "GUARD_RUN": GUARD_RUN,
        "GUARDCTL": command("guardctl"),
        "COVER_TMP": may_cover("/tmp"),
        "COVER_VAR_LIB": may_cover("/var/lib"),
    }
    result = subprocess.run(
        [unshare, "-m", "--propagation", "private", "sh", "-c", DRAIN_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "drain=3" in result.stdout, result.stdout + result.stderr
