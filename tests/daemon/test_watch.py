"""The watcher's pure parts: which file systems need polling, which directories
lead to a watched one."""

from __future__ import annotations

from pathlib import Path

from guardd.daemon.watch import fs_type, needs_polling, parse_mountinfo, path_chain

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw
41 22 0:40 / /srv/shared rw - nfs4 server:/export rw
42 22 0:41 / /mnt/with\\040space rw - fuse.sshfs host: rw
"""


def test_parse_mountinfo_and_longest_prefix() -> None:
    """Mount points map to fs types; the longest matching mount point wins."""
    mounts = parse_mountinfo(MOUNTINFO)
    assert ("/mnt/with space", "fuse.sshfs") in mounts
    assert fs_type("/run/guardd", mounts) == "tmpfs"
    assert fs_type("/srv/shared/flags", mounts) == "nfs4"
    assert fs_type("/srv/sharedother", mounts) == "ext4"
    assert fs_type("/var/lib/guardd", mounts) == "ext4"


def test_network_file_systems_are_polled() -> None:
    """NFS, CIFS and FUSE are polled; local file systems use inotify."""
    assert needs_polling("nfs4") and needs_polling("cifs") and needs_polling("fuse.sshfs")
    assert not needs_polling("ext4") and not needs_polling("tmpfs")


def test_path_chain_follows_symlinks_and_stops_at_what_is_missing(tmp_path: Path) -> None:
    """Every directory on the way to a path, symlink targets (relative, absolute,
    with ``..``) included, each with the name that matters in it; a missing component
    ends the chain at its parent."""
    root = tmp_path.resolve()
    (root / "releases" / "7" / "storage").mkdir(parents=True)
    (root / "current").symlink_to("releases/7")
    (root / "abs").symlink_to(root / "releases" / "7" / "storage" / "..")
    chain = path_chain(f"{root}/current/storage")
    assert chain[str(root)] == {"current", "releases"}
    assert chain[f"{root}/releases"] == {"7"}
    assert chain[f"{root}/releases/7"] == {"storage"}
    assert chain["/"] == {root.parts[1]}
    chain = path_chain(f"{root}/abs/storage")
    assert chain[f"{root}/releases/7"] == {"storage"} and "abs" in chain[str(root)]
    chain = path_chain(f"{root}/missing/deeper/still")
    assert chain[str(root)] == {"missing"} and f"{root}/missing" not in chain
    (root / "loop").symlink_to("loop")
    assert path_chain(f"{root}/loop/x")[str(root)] == {"loop"}  # bounded, no hang
