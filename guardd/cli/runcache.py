"""The config cache: guard-run's settings (a RunView) without parsing YAML on every run.

``import yaml`` alone costs more than starting Python, and guard-run sits in front of
every cron job. The cache maps one config file to its RunView, keyed on the file's
identity *and* content checksum (an edit in the same timestamp tick is still seen),
plus the built-in defaults the view may depend on. It lives where only the invoking
user can write (``$XDG_CACHE_HOME/guardd``, else ``~/.cache/guardd``). Any doubt —
wrong owner, loose mode, a key mismatch, bad JSON — means a full load_config.
"""

import os
import stat

from guardd.core.paths import RunView, default_lock_dir, default_runtime_dir, find_config_path

CACHE_VERSION = 3
# A config file bigger than this is not cached (and surely not a config file).
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CACHE_BYTES = 256 * 1024


def load_run_view(config_path: str | None) -> RunView:
    """guard-run's view of the config: built-ins, the cache, or a full (validating) load.

    ``config_path`` is ``--config`` (None: ``$GUARDD_CONFIG``, else the default file,
    else built-ins). Raises ConfigError exactly as load_config does.
    """
    path = find_config_path(config_path)
    if path is None:
        return RunView.builtin()
    path = os.path.abspath(path)
    key = config_key(path)
    if key is None:
        return _full_load(path)  # unreadable or odd: load_config says why
    cache_file = cache_path(path)
    if cache_file is not None:
        cached = read_cache(cache_file, key)
        if cached is not None:
            return cached
    view = _full_load(path)
    if cache_file is not None:
        write_cache(cache_file, key, view)
    return view


def _full_load(path: str) -> RunView:
    from guardd.config.load import load_config

    return load_config(path).run_view()


def config_key(path: str) -> dict[str, object] | None:
    """What the cached view depends on; None when the file cannot be read as a config."""
    import zlib

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CONFIG_BYTES:
            return None
        content = os.read(fd, MAX_CONFIG_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(content) != info.st_size:
        return None  # changing under our feet: do not cache a moving target
    return {
        "path": path,
        "dev": info.st_dev,
        "ino": info.st_ino,
        "size": info.st_size,
        "mtime_ns": info.st_mtime_ns,
        "ctime_ns": info.st_ctime_ns,
        # stat alone misses an in-place rewrite of the same size within one tick
        "crc32": zlib.crc32(content),
        # settings the config leaves out come from these (the same for every user
        # today; kept in the key so that a change of that rule cannot serve a stale view)
        "euid": os.geteuid(),
        "default_lock_dir": default_lock_dir(config_file=True),
        "default_runtime_dir": default_runtime_dir(config_file=True),
    }


def cache_dir() -> str | None:
    """``$XDG_CACHE_HOME/guardd``, else ``~/.cache/guardd``; None without a home."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "guardd")


def cache_path(config_path: str) -> str | None:
    """The cache file for one config file (one file per config path)."""
    import zlib

    directory = cache_dir()
    if directory is None:
        return None
    tag = zlib.crc32(config_path.encode("utf-8", "surrogateescape"))
    return os.path.join(directory, f"run-view-{tag:08x}.v{CACHE_VERSION}")


def _trusted(info: os.stat_result, *, owners: tuple[int, ...]) -> bool:
    """Owned by us (or root, for directories) and writable by nobody else."""
    return info.st_uid in owners and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _trusted_dir(directory: str) -> bool:
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and _trusted(info, owners=(os.geteuid(), 0))


# The cache file's first line. Not JSON: the json module imports re, enum and more,
# which alone costs guard-run half of Python's own start-up.
CACHE_MAGIC = f"guardd run-view cache {CACHE_VERSION}"


def _encode(value: object) -> str:
    """One value of the cache file: ``b0``/``b1``, ``i<int>`` or ``s<hex of UTF-8>``."""
    if isinstance(value, bool):
        return f"b{int(value)}"
    if isinstance(value, int):
        return f"i{value}"
    if isinstance(value, str):
        return "s" + value.encode("utf-8", "surrogateescape").hex()
    raise TypeError(f"cannot cache {value!r}")


def _decode(text: str) -> bool | int | str:
    """The inverse of _encode; raises ValueError on anything else."""
    kind, rest = text[:1], text[1:]
    if kind == "b" and rest in ("0", "1"):
        return rest == "1"
    if kind == "i":
        return int(rest)
    if kind == "s":
        return bytes.fromhex(rest).decode("utf-8", "surrogateescape")
    raise ValueError(text)


def encode_entry(key: dict[str, object], view: dict[str, object]) -> bytes:
    """The cache file: a magic line, then one ``SECTION.NAME<TAB>value`` line per value
    of the key and of the view (``RunView.to_json_obj()``); a mapping (the scopes'
    flags) is one line per item, with two values."""
    lines = [CACHE_MAGIC]
    for section, data in (("key", key), ("view", view)):
        for name, value in sorted(data.items()):
            if isinstance(value, dict):
                lines += [
                    f"{section}.{name}\t{_encode(k)}\t{_encode(v)}"
                    for k, v in sorted(value.items())
                ]
            else:
                lines.append(f"{section}.{name}\t{_encode(value)}")
    return ("\n".join(lines) + "\n").encode("ascii")


def decode_entry(data: bytes) -> dict[str, dict[str, object]] | None:
    """``{"key": ..., "view": ...}`` from a cache file; None unless it is exactly what
    encode_entry writes (this version's magic line included)."""
    entry: dict[str, dict[str, object]] = {"key": {}, "view": {}}
    try:
        first, *lines = data.decode("ascii").split("\n")
        if first != CACHE_MAGIC or lines[-1:] != [""]:
            return None
        for line in lines[:-1]:
            name, *values = line.split("\t")
            section, _, field = name.partition(".")
            target = entry.get(section)
            if target is None or not field:
                return None
            if len(values) == 1:
                target[field] = _decode(values[0])
            elif len(values) == 2:
                mapping = target.setdefault(field, {})
                if not isinstance(mapping, dict):
                    return None
                mapping[_decode(values[0])] = _decode(values[1])
            else:
                return None
    except (UnicodeDecodeError, ValueError):
        return None
    return entry


def read_cache(cache_file: str, key: dict[str, object]) -> RunView | None:
    """The cached view for ``key``; None on a miss or on any doubt about the file."""
    if not _trusted_dir(os.path.dirname(cache_file)):
        return None
    try:
        fd = os.open(cache_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not _trusted(info, owners=(os.geteuid(),)):
            return None
        data = os.read(fd, MAX_CACHE_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    entry = decode_entry(data)
    if entry is None or entry["key"] != key:
        return None
    return RunView.from_json_obj(entry["view"])


def write_cache(cache_file: str, key: dict[str, object], view: RunView) -> bool:
    """Store ``view`` atomically (temp file, rename); best effort, True when stored."""
    directory = os.path.dirname(cache_file)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError:
        return False
    if not _trusted_dir(directory):
        return False
    try:
        # A cache, not a record: no fsync (a lost write only costs one full load).
        from guardd.core.atomic import write_atomic  # only when the cache is (re)written

        write_atomic(cache_file, encode_entry(key, view.to_json_obj()), mode=0o600, durable=False)
    except OSError:
        return False
    return True
