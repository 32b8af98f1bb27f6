"""The config cache: a RunView reused only while the config file and the built-ins it
depends on are unchanged, and only from a file nobody else could have written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardd.cli import runcache
from guardd.cli.runcache import (
    CACHE_MAGIC,
    cache_path,
    config_key,
    decode_entry,
    encode_entry,
    load_run_view,
    read_cache,
    write_cache,
)
from guardd.core.paths import RunView
from guardd.errors import ConfigError
from tests.run_helpers import NOBODY

CONFIG = """\
lock_dir: {root}/lock
runtime_dir: {root}/run
scopes:
  shop: {{}}
  blog: {{lock_file: {root}/blog/down}}
run: {{skip_code: 5}}
http: {{listen: []}}
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid config file, and a private XDG cache home for this test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GUARDD_CONFIG", raising=False)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(root=tmp_path))
    return path


def _cache_file(config: Path) -> Path:
    found = cache_path(str(config))
    assert found is not None
    return Path(found)


def test_cold_load_fills_cache_and_warm_load_uses_it(config: Path) -> None:
    """The first load parses YAML and stores the view; the next returns it unchanged."""
    view = load_run_view(str(config))
    assert view.scope_flags["blog"] == f"{config.parent}/blog/down"
    assert view.skip_code == 5
    entry = decode_entry(_cache_file(config).read_bytes())
    assert entry is not None
    assert entry["view"] == view.to_json_obj()
    assert entry["key"]["path"] == str(config)
    again = load_run_view(str(config))
    assert again.to_json_obj() == view.to_json_obj()


def test_warm_load_does_not_import_yaml(config: Path) -> None:
    """With a warm cache, loading the view imports neither yaml nor guardd.config."""
    load_run_view(str(config))
    probe = (
        "import sys; from guardd.cli.runcache import load_run_view; "
        f"view = load_run_view({str(config)!r}); "
        "print(sorted(m for m in ('yaml', 'guardd.config', 'dataclasses') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    assert result.stdout == "[]\n"
    _cache_file(config).unlink()
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    assert "'yaml'" in result.stdout  # the cold path really parses: the probe can tell


def test_same_size_edit_with_restored_mtime_is_seen(config: Path) -> None:
    """An edit of the same size, with the old mtime put back, still misses the cache."""
    load_run_view(str(config))
    before = config.stat()
    text = config.read_text()
    config.write_text(text.replace("skip_code: 5", "skip_code: 6"))
    os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_run_view(str(config)).skip_code == 6


def test_config_turned_invalid_is_an_error_despite_cache(config: Path) -> None:
    """A cached view never hides a config that became invalid."""
    load_run_view(str(config))
    config.write_text("run: {skip_code: nope}\n")
    with pytest.raises(ConfigError, match=r"run\.skip_code"):
        load_run_view(str(config))


def test_builtin_defaults_are_part_of_the_key(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config that leaves out runtime_dir is not reused under other built-in defaults."""
    config.write_text("http: {listen: []}\nlock_dir: /srv/lock\n")
    first = load_run_view(str(config))
    monkeypatch.setattr(runcache, "default_runtime_dir", lambda *, config_file: "/elsewhere/guardd")
    key = config_key(str(config))
    assert key is not None
    assert read_cache(str(_cache_file(config)), key) is None
    assert first.runtime_dir != "/elsewhere/guardd"


@pytest.mark.parametrize("damage", ["garbage", "wrong-version", "bad-view", "not-object"])
def test_damaged_cache_falls_back_to_full_load(config: Path, damage: str) -> None:
    """A cache file that is not exactly what we write is ignored, then rewritten."""
    view = load_run_view(str(config))
    cache = _cache_file(config)
    written = cache.read_bytes()
    entry = decode_entry(written)
    assert entry is not None
    if damage == "garbage":
        cache.write_bytes(b"\x00{{{")
    elif damage == "wrong-version":
        cache.write_bytes(written.replace(CACHE_MAGIC.encode(), b"guardd run-view cache 99", 1))
    elif damage == "bad-view":
        cache.write_bytes(encode_entry(entry["key"], {**entry["view"], "skip_code": "5"}))
    else:
        cache.write_text('{"version": 2, "key": {}, "view": {}}')
    key = config_key(str(config))
    assert key is not None
    assert read_cache(str(cache), key) is None
    assert load_run_view(str(config)).to_json_obj() == view.to_json_obj()
    assert cache.read_bytes() == written


def _poisoned(config: Path) -> tuple[Path, dict[str, object]]:
    """A cache entry claiming skip_code 99, with the right key."""
    load_run_view(str(config))
    cache = _cache_file(config)
    entry = decode_entry(cache.read_bytes())
    assert entry is not None
    cache.write_bytes(encode_entry(entry["key"], {**entry["view"], "skip_code": 99}))
    key = config_key(str(config))
    assert key is not None
    found = read_cache(str(cache), key)
    assert found is not None and found.skip_code == 99  # accepted while it is trusted
    return cache, key


def test_cache_file_writable_by_others_is_ignored(config: Path) -> None:
    """A group- or world-writable cache file is not trusted."""
    cache, key = _poisoned(config)
    for mode in (0o620, 0o602):
        cache.chmod(mode)
        assert read_cache(str(cache), key) is None


def test_cache_dir_writable_by_others_is_ignored(config: Path) -> None:
    """A cache directory others may write to is not trusted, for reading or writing."""
    cache, key = _poisoned(config)
    cache.parent.chmod(0o777)
    assert read_cache(str(cache), key) is None
    assert not write_cache(str(cache), key, RunView.builtin())


def test_cache_file_of_another_owner_is_ignored(config: Path) -> None:
    """A cache file owned by another user is not trusted (even root's own dir)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    cache, key = _poisoned(config)
    os.chown(cache, NOBODY.pw_uid, NOBODY.pw_gid)
    assert read_cache(str(cache), key) is None


def test_symlinked_cache_file_is_ignored(config: Path, tmp_path: Path) -> None:
    """The cache file is never followed through a symlink."""
    cache, key = _poisoned(config)
    target = tmp_path / "elsewhere.cache"
    cache.rename(target)
    cache.symlink_to(target)
    assert read_cache(str(cache), key) is None


def test_unusable_cache_location_still_loads(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no cache can be written, every load is a full (correct) load."""
    blocker = tmp_path / "file"
    blocker.touch()
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert load_run_view(str(config)).skip_code == 5
    assert load_run_view(str(config)).skip_code == 5


def test_no_config_file_means_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --config, $GUARDD_CONFIG or /etc/guardd/config.yaml: RunView.builtin()."""
    if os.path.exists("/etc/guardd/config.yaml"):
        pytest.skip("this host has /etc/guardd/config.yaml")
    monkeypatch.delenv("GUARDD_CONFIG", raising=False)
    assert load_run_view(None).to_json_obj() == RunView.builtin().to_json_obj()


def test_missing_named_config_is_config_error(tmp_path: Path) -> None:
    """A config path that does not exist is a ConfigError, never the built-ins."""
    with pytest.raises(ConfigError, match="no such file"):
        load_run_view(str(tmp_path / "missing.yaml"))
