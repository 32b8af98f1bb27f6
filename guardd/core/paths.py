"""Where things live: built-in directories, flag and run-lock paths, scope names.

Lean on purpose (no dataclasses, no yaml): guard-run decides through this module.
"""

import os

SCOPE_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
DEFAULT_SCOPE = "default"
DEFAULT_CONFIG_PATH = "/etc/guardd/config.yaml"
CONFIG_ENV = "GUARDD_CONFIG"
SCOPE_ENV = "GUARD_SCOPE"
SCOPE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def is_scope_name(name: str) -> bool:
    """True when ``name`` matches ``[a-z0-9][a-z0-9_-]{0,63}`` (checked without ``re``)."""
    return (
        0 < len(name) <= 64
        and name[0] not in "_-"
        and all(char in SCOPE_NAME_CHARS for char in name)
    )


SYSTEM_LOCK_DIR = "/var/lib/guardd"
SYSTEM_RUNTIME_DIR = "/run/guardd"
# Modes of the directories guardd and guardctl create, whatever the umask (SPEC):
# group members switch maintenance (setgid keeps the group on new flags); every
# user's jobs open the run locks.
LOCK_DIR_MODE = 0o2775
RUNTIME_DIR_MODE = 0o755


def user_state_dir() -> str | None:
    """``$HOME/.local/state/guardd`` for a non-root caller without any config file;
    None when the system paths apply. Only ``$HOME`` counts (cron sets it, as a login
    shell does), never XDG_* variables, which differ between the two."""
    if os.geteuid() == 0:
        return None
    home = os.environ.get("HOME", "")
    if not os.path.isabs(home):
        import pwd

        home = pwd.getpwuid(os.getuid()).pw_dir
    return os.path.join(home, ".local", "state", "guardd")


def default_lock_dir(*, config_file: bool) -> str:
    """Built-in flag directory (SPEC "Paths never depend on who asks"): /var/lib/guardd
    whenever a config file is in use or the caller is root, else the user's state dir."""
    user = None if config_file else user_state_dir()
    return user if user is not None else SYSTEM_LOCK_DIR


def default_runtime_dir(*, config_file: bool) -> str:
    """Built-in runtime directory: /run/guardd whenever a config file is in use or the
    caller is root, else ``run`` in the user's state dir. Never /tmp: a directory in a
    world-writable place is whoever created it first's."""
    user = None if config_file else user_state_dir()
    return os.path.join(user, "run") if user is not None else SYSTEM_RUNTIME_DIR


def make_dir(path: str, mode: int, *, gid: int = -1) -> None:
    """Create ``path`` (and missing parents, 0755) with exactly ``mode`` whatever the
    umask, and group ``gid`` when given. A directory that exists is left as it is:
    its mode is the operator's choice. Raises OSError."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        make_dir(parent, 0o755)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return  # made meanwhile by someone else: theirs
    if gid != -1:
        os.chown(path, -1, gid)
    os.chmod(path, mode)  # after chown, which clears setgid for non-root callers


def group_id(group: str | None) -> int:
    """The gid of ``control.group`` (a name or a number); -1 when unset or unknown (the
    control socket, which needs the group too, reports an unknown one)."""
    if group is None:
        return -1
    if group.isdigit():
        return int(group)
    import grp

    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return -1


def find_config_path(explicit: str | None) -> str | None:
    """``--config``, else ``$GUARDD_CONFIG``, else /etc/guardd/config.yaml if present."""
    if explicit:
        return explicit
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        return from_env
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH
    return None


def flag_path(lock_dir: str, scope: str) -> str:
    """The scope's flag file in the lock directory."""
    return os.path.join(lock_dir, f"{scope}.lock")


def fleet_flag_path(lock_dir: str, scope: str) -> str:
    """Where guardd mirrors the scope's fleet flag, so guard-run stays file-only."""
    return os.path.join(lock_dir, f"{scope}.fleet.lock")


def run_lock_path(runtime_dir: str, scope: str) -> str:
    """The scope's run lock: guarded jobs hold it shared for their whole life."""
    return os.path.join(runtime_dir, f"{scope}.run")


class RunView:
    """The few settings guard-run needs, without the cost of loading the full config."""

    __slots__ = ("fleet_mirrors", "lock_dir", "runtime_dir", "scope_flags", "skip_code")

    def __init__(
        self,
        *,
        lock_dir: str,
        runtime_dir: str,
        scope_flags: dict[str, str],
        skip_code: int,
        fleet_mirrors: bool = False,
    ) -> None:
        self.lock_dir = lock_dir
        self.runtime_dir = runtime_dir
        # scope name -> its flag path (own lock_file or <lock_dir>/<scope>.lock)
        self.scope_flags = scope_flags
        self.skip_code = skip_code
        # Fleet mode: guardd mirrors fleet flags into <lock_dir>/<scope>.fleet.lock.
        # Only then do the mirrors count (a leftover one after fleet mode ends does not).
        self.fleet_mirrors = fleet_mirrors

    @classmethod
    def builtin(cls) -> "RunView":
        """The view of the built-in defaults (no config file)."""
        lock_dir = default_lock_dir(config_file=False)
        return cls(
            lock_dir=lock_dir,
            runtime_dir=default_runtime_dir(config_file=False),
            scope_flags={DEFAULT_SCOPE: flag_path(lock_dir, DEFAULT_SCOPE)},
            skip_code=0,
        )

    def to_json_obj(self) -> dict[str, object]:
        """Plain data for the config cache."""
        return {
            "lock_dir": self.lock_dir,
            "runtime_dir": self.runtime_dir,
            "scope_flags": dict(self.scope_flags),
            "skip_code": self.skip_code,
            "fleet_mirrors": self.fleet_mirrors,
        }

    @classmethod
    def from_json_obj(cls, data: object) -> "RunView | None":
        """Rebuild from the cache; None when the data is not exactly what we wrote."""
        if not isinstance(data, dict):
            return None
        lock_dir = data.get("lock_dir")
        runtime_dir = data.get("runtime_dir")
        scope_flags = data.get("scope_flags")
        skip_code = data.get("skip_code")
        fleet_mirrors = data.get("fleet_mirrors")
        if not (
            isinstance(lock_dir, str)
            and isinstance(runtime_dir, str)
            and isinstance(scope_flags, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in scope_flags.items())
            and isinstance(skip_code, int)
            and not isinstance(skip_code, bool)
            and isinstance(fleet_mirrors, bool)
        ):
            return None
        return cls(
            lock_dir=lock_dir,
            runtime_dir=runtime_dir,
            scope_flags=scope_flags,
            skip_code=skip_code,
            fleet_mirrors=fleet_mirrors,
        )
