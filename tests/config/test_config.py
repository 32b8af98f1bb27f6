"""Configuration: defaults, validation with key paths, and guardd --check-config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from guardd.config.load import (
    build_config,
    load_config,
    parse_config_text,
    resolve_secrets,
)
from guardd.config.model import ListenAddress
from guardd.config.section import parse_listen
from guardd.core.paths import default_lock_dir, default_runtime_dir
from guardd.errors import ConfigError
from tests.helpers import command


def cfg(data: dict[str, object]):
    return build_config(data, source="test.yaml")


def test_builtin_defaults_match_the_spec() -> None:
    """An empty config gives the SPEC's defaults."""
    config = cfg({})
    assert list(config.scopes) == ["default"]
    assert config.poll_interval == 2.0
    assert config.http.listen == (ListenAddress("127.0.0.1", 8089),)
    assert (config.http.policy, config.http.scope, config.http.health_path) == (
        "withdraw",
        "default",
        "/healthz",
    )
    assert (config.http.gate_path, config.http.page_status, config.http.retry_after) == (
        "/gate",
        503,
        300,
    )
    assert config.http.api_prefixes == ("/api/",)
    assert config.http.header_timeout == 10.0
    assert config.agent.listen == ()
    assert config.agent.withdraw_as == "maint"
    assert config.run.skip_code == 0
    assert (config.fleet.prefix, config.fleet.lease_ttl) == ("/guardd", 10.0)
    assert config.hooks.timeout == 30.0
    assert config.bypass.cookie_ttl == 12 * 3600
    assert config.control.mode == 0o660
    assert config.control.socket == os.path.join(config.runtime_dir, "guardd.sock")


def test_builtin_dirs_are_the_system_ones_with_a_config_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a config file the built-in paths are /var/lib/guardd and /run/guardd for
    every user, whatever HOME or XDG_* say (SPEC "Paths never depend on who asks")."""
    monkeypatch.setenv("XDG_STATE_HOME", "/x/state")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/x/run")
    monkeypatch.setenv("HOME", "/home/www")
    for euid in (0, 33, 1000):
        monkeypatch.setattr(os, "geteuid", lambda euid=euid: euid)
        config = cfg({})
        assert (config.lock_dir, config.runtime_dir) == ("/var/lib/guardd", "/run/guardd")


def test_builtin_dirs_without_config_file_come_from_home_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No config file at all: a non-root user gets ~/.local/state/guardd[/run] from
    $HOME only (never /tmp, never XDG_*); root the system paths."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", "/home/www")
    expected = ("/home/www/.local/state/guardd", "/home/www/.local/state/guardd/run")
    for xdg in ({}, {"XDG_STATE_HOME": "/x/state", "XDG_RUNTIME_DIR": "/run/user/1000"}):
        for name in ("XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
            monkeypatch.delenv(name, raising=False)
        for name, value in xdg.items():
            monkeypatch.setenv(name, value)
        config = build_config({}, source=None)
        assert (config.lock_dir, config.runtime_dir) == expected
        assert (default_lock_dir(config_file=False), default_runtime_dir(config_file=False)) == (
            expected
        )
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    config = build_config({}, source=None)
    assert (config.lock_dir, config.runtime_dir) == ("/var/lib/guardd", "/run/guardd")


def test_scopes_and_lock_files() -> None:
    """Named scopes get <lock_dir>/<scope>.lock or their own lock_file; default always exists."""
    config = cfg(
        {"lock_dir": "/l", "scopes": {"shop": None, "blog": {"lock_file": "/srv/blog/down"}}}
    )
    assert sorted(config.scopes) == ["blog", "default", "shop"]
    assert config.flag_path("shop") == "/l/shop.lock"
    assert config.flag_path("blog") == "/srv/blog/down"
    assert config.flag_path("default") == "/l/default.lock"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"htp": {}}, "htp: unknown key (did you mean 'http'?)"),
        ({"http": {"lisen": []}}, "http.lisen: unknown key (did you mean 'http.listen'?)"),
        ({"http": {"listen": ["127.0.0.1"]}}, "http.listen[0]: expected HOST:PORT"),
        ({"http": {"listen": ["x", 5]}}, "http.listen[0]"),
        ({"http": {"listen": ["127.0.0.1:8080", 5]}}, "http.listen[1]: expected"),
        ({"http": {"listen": ["[::1]:99999"]}}, "http.listen[0]: the port must be"),
        ({"http": {"listen": ["::1:80"]}}, "needs brackets"),
        ({"http": {"policy": "withdrew"}}, "did you mean 'withdraw'?"),
        ({"http": {"policy": "fleet"}}, "http.policy: 'fleet' needs fleet.endpoints"),
        ({"http": {"page_status": "503"}}, "http.page_status: expected a whole number"),
        ({"http": {"page_status": 99}}, "from 200 to 599"),
        (
            {"http": {"page_status": 204}},
            "http.page_status: expected a whole number from 200 to 599 for a status that carries",
        ),
        (
            {"http": {"page_status": 205}},
            "http.page_status: expected a whole number from 200 to 599 for a status that carries",
        ),
        (
            {"http": {"page_status": 304}},
            "http.page_status: expected a whole number from 200 to 599 for a status that carries",
        ),
        (
            {"http": {"page_status": 101}},
            "http.page_status: expected a whole number from 200 to 599 for a status that carries",
        ),
        ({"http": {"scope": "shop"}}, "http.scope: expected a configured scope"),
        ({"http": {"health_path": "healthz"}}, "http.health_path: expected a URL path"),
        ({"http": {"page_template": "/nonexistent/page.html"}}, "http.page_template: cannot read"),
        ({"http": {"header_timeout": "soon"}}, "http.header_timeout: expected a duration"),
        ({"poll_interval": 0}, "poll_interval: expected a duration"),
        ({"poll_interval": True}, "poll_interval: expected a duration"),
        ({"lock_dir": "relative/dir"}, "lock_dir: expected an absolute path"),
        ({"scopes": {"Bad Name": None}}, "scopes.Bad Name: expected a scope name"),
        ({"scopes": {"shop": {"lockfile": "/x"}}}, "did you mean 'scopes.shop.lock_file'?"),
        ({"scopes": "shop"}, "scopes: expected a mapping"),
        ({"control": {"mode": "rw"}}, "control.mode: expected a file mode"),
        ({"control": {"mode": 0o1777}}, "control.mode"),
        ({"agent": {"withdraw_as": "up"}}, "agent.withdraw_as: expected one of maint, drain, down"),
        ({"run": {"skip_code": 300}}, "run.skip_code: expected a whole number from 0 to 255"),
        ({"bypass": {"cidrs": ["10.0.0.0/33"]}}, "bypass.cidrs[0]: expected an IPv4 or IPv6"),
        ({"bypass": {"paths": ["(unclosed"]}}, "bypass.paths[0]: expected a regular expression"),
        ({"bypass": {"secret": "short"}}, "bypass.secret: expected at least 16 characters"),
        ({"hooks": {"on_enter": ["echo hi"]}}, "hooks.on_enter[0]: expected a command"),
        ({"hooks": {"on_exit": [[]]}}, "hooks.on_exit[0]"),
        ({"fleet": {"prefix": "guardd"}}, "fleet.prefix: expected a key prefix"),
        ({"http": []}, "http: expected a mapping, got a list"),
        (
            {"http": {"gate_path": "/healthz"}},
            "http.gate_path: '/healthz' is also http.health_path",
        ),
        ({"http": {"gate_path": "/maintenance.json"}}, "is taken by the status document"),
        ({"http": {"health_path": "/.guardd/h"}}, "is taken by guardd's own /.guardd/ paths"),
    ],
)
def test_bad_values_name_the_key_path(data: dict[str, object], message: str) -> None:
    """Each bad key or value is one ConfigError naming its key path and what was expected."""
    with pytest.raises(ConfigError) as caught:
        cfg(data)
    assert message in caught.value.message
    assert caught.value.message.startswith("test.yaml: ")
    assert "\n" not in caught.value.message
    assert caught.value.exit_code == 2


def test_listen_forms() -> None:
    """HOST:PORT, [V6ADDR]:PORT and :PORT (all addresses) parse."""
    assert parse_listen("127.0.0.1:80") == ListenAddress("127.0.0.1", 80)
    assert parse_listen("[::1]:8089") == ListenAddress("::1", 8089)
    assert parse_listen(":8089") == ListenAddress("", 8089)
    assert parse_listen("localhost:1") == ListenAddress("localhost", 1)


def test_mode_accepts_yaml_octal_and_strings() -> None:
    """control.mode takes YAML's 0660 (an int) and the string '0660' alike."""
    assert parse_config_text(b"control: {mode: 0660}", source="t").control.mode == 0o660
    assert parse_config_text(b"control: {mode: '0640'}", source="t").control.mode == 0o640


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"http: [\n", "line 2, column 1: invalid YAML"),
        (b"- a\n- b\n", "expected a mapping of settings at the top level, got a list"),
        (b"just text", "got the text 'just text'"),
        (b"\xff\xfe\x00garbage", "t: "),
        (b"a: &x [*x]\nb: !!python/object:os.system echo", "invalid YAML"),
    ],
)
def test_non_yaml_is_one_clear_error(text: bytes, message: str) -> None:
    """Broken YAML, non-mappings and binary give one ConfigError, never a traceback."""
    with pytest.raises(ConfigError) as caught:
        parse_config_text(text, source="t")
    assert message in caught.value.message


def test_empty_file_means_defaults() -> None:
    """An empty config file is the built-in defaults."""
    assert parse_config_text(b"", source="t").http.policy == "withdraw"


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
known_keys = st.sampled_from(
    [
        "lock_dir",
        "runtime_dir",
        "node",
        "poll_interval",
        "scopes",
        "control",
        "http",
        "agent",
        "run",
        "fleet",
        "bypass",
        "hooks",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(known_keys | st.text(max_size=8), yaml_values, max_size=5))
def test_any_mapping_is_valid_or_one_config_error(data: dict[str, object]) -> None:
    """Whatever the YAML holds, the result is a Config or a ConfigError: never anything else."""
    text = yaml.safe_dump(data)
    try:
        parse_config_text(text, source="fuzz.yaml")
    except ConfigError as err:
        assert err.message.startswith("fuzz.yaml: ")
        assert "\n" not in err.message


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_are_valid_or_one_config_error(raw: bytes) -> None:
    """Arbitrary bytes as a config file never raise anything but ConfigError."""
    try:
        parse_config_text(raw, source="fuzz.yaml")
    except ConfigError as err:
        assert "\n" not in err.message


def test_missing_named_file_is_an_error(tmp_path: Path) -> None:
    """A config file named on the command line must exist."""
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "nope.yaml"))


def test_check_config_prints_effective_config_and_masks_secrets(tmp_path: Path) -> None:
    """guardd --check-config prints the effective config (secret masked) and exits 0."""
    path = tmp_path / "c.yaml"
    path.write_text("scopes: {shop: {}}\nbypass: {secret: 'correct-horse-battery-staple'}\n")
    result = subprocess.run(
        [command("guardd"), "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["scopes"]["shop"]["flag"].endswith("/shop.lock")
    assert printed["http"]["listen"] == ["127.0.0.1:8089"]
    assert printed["bypass"]["secret"] == "********"
    assert "correct-horse" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http:\n  listen: [8080]\n", "http.listen[0]"),
        ("htpp: {}\n", "did you mean 'http'"),
        ("{{{{", "invalid YAML"),
    ],
)
def test_check_config_rejects_with_one_line_and_exit_2(
    tmp_path: Path, text: str, message: str
) -> None:
    """guardd --check-config on a bad config: exit 2, one line on stderr, no traceback."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    result = subprocess.run(
        [command("guardd"), "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_scopes_as_a_plain_list() -> None:
    """`scopes: [shop, blog]` is accepted as scopes with default settings."""
    config = parse_config_text(b"scopes: [shop, blog]\n", source="t")
    assert sorted(config.scopes) == ["blog", "default", "shop"]


def test_example_config_is_valid() -> None:
    """config.example.yaml, which documents every key, loads as a valid config."""
    path = Path(__file__).parents[2] / "config.example.yaml"
    config = load_config(str(path))
    assert "shop" in config.scopes
    assert config.http.policy == "withdraw"


def test_secret_file_is_read_by_guardd_only(tmp_path: Path) -> None:
    """bypass.secret_file: loading the config never reads it; guardd does, and masks it."""
    secret_file = tmp_path / "bypass.secret"
    config_path = tmp_path / "c.yaml"
    config_path.write_text(f"bypass: {{secret_file: {secret_file}}}\n")
    config = load_config(str(config_path))  # what guard-run does: the file may be unreadable
    assert config.bypass.secret is None and config.bypass.secret_file == str(secret_file)
    with pytest.raises(ConfigError, match=r"bypass\.secret_file: cannot read"):
        resolve_secrets(config)
    secret_file.write_text("short\n")
    with pytest.raises(ConfigError, match="expected at least 16 characters"):
        resolve_secrets(config)
    secret_file.write_text("correct-horse-battery-staple\n")
    assert resolve_secrets(config).bypass.secret == "correct-horse-battery-staple"
    result = subprocess.run(
        [command("guardd"), "--check-config", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["bypass"]["secret"] == "********"
    assert "correct-horse" not in result.stdout


def test_secret_and_secret_file_together_is_an_error() -> None:
    """bypass.secret and bypass.secret_file are exclusive."""
    with pytest.raises(ConfigError, match="not both"):
        cfg({"bypass": {"secret": "x" * 20, "secret_file": "/etc/guardd/secret"}})
