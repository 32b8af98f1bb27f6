"""The one rule (core/switch.py): which files put a scope on, and the fail-closed probe."""

from __future__ import annotations

from pathlib import Path

from guardd.core.paths import RunView
from guardd.core.switch import Hit, first_on, in_force, probe, scope_on, switch_files


def _view(tmp_path: Path, *, fleet: bool = False) -> RunView:
    return RunView(
        lock_dir=str(tmp_path),
        runtime_dir=str(tmp_path / "run"),
        scope_flags={"default": str(tmp_path / "default.lock"), "shop": str(tmp_path / "down")},
        skip_code=0,
        fleet_mirrors=fleet,
    )


def test_probe_absent_present_and_dangling(tmp_path: Path) -> None:
    """Missing (or below a plain file) is None; a file, a directory or a dangling
    symlink is present."""
    assert probe(str(tmp_path / "none.lock")) is None
    (tmp_path / "plain").write_text("")
    assert probe(str(tmp_path / "plain" / "x.lock")) is None  # ENOTDIR
    assert probe(str(tmp_path / "plain")) == Hit(str(tmp_path / "plain"))
    (tmp_path / "link.lock").symlink_to(tmp_path / "missing")
    assert probe(str(tmp_path / "link.lock")) == Hit(str(tmp_path / "link.lock"))


def test_probe_unknown_counts_as_present(tmp_path: Path) -> None:
    """Where existence cannot be known (here ELOOP: a symlink loop above the flag) the
    file is a Hit with the reason, i.e. on: fail closed."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    hit = probe(str(tmp_path / "loop" / "default.lock"))
    assert hit is not None and hit.doubt is not None and "symbolic links" in hit.doubt
    assert probe("bad\0path") == Hit("bad\0path", "invalid path")


def test_switch_files_own_then_default_and_mirrors_only_in_fleet_mode(tmp_path: Path) -> None:
    """A scope's files: its flag, its mirror in fleet mode, then default's."""
    lock = str(tmp_path)
    assert switch_files(_view(tmp_path), "shop") == (f"{lock}/down", f"{lock}/default.lock")
    assert switch_files(_view(tmp_path, fleet=True), "shop") == (
        f"{lock}/down",
        f"{lock}/shop.fleet.lock",
        f"{lock}/default.lock",
        f"{lock}/default.fleet.lock",
    )
    (tmp_path / "shop.fleet.lock").write_text("")
    assert scope_on(_view(tmp_path), "shop") is None
    assert scope_on(_view(tmp_path, fleet=True), "shop") == Hit(f"{lock}/shop.fleet.lock")
    assert scope_on(_view(tmp_path, fleet=True), "default") is None
    (tmp_path / "default.lock").write_text("")
    assert first_on(switch_files(_view(tmp_path), "shop")) == Hit(f"{lock}/default.lock")


def test_in_force_own_then_default() -> None:
    """A scope's own answer comes first, then default's; default has only its own."""
    assert in_force({"default": "d", "shop": None}, "shop") == (("default", "d"),)
    assert in_force({"default": "d", "shop": "s"}, "shop") == (("shop", "s"), ("default", "d"))
    assert in_force({"default": None, "shop": None}, "shop") == ()
    assert in_force({"default": None, "shop": "s"}, "default") == ()
