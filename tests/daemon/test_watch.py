"""The watcher's pure parts: which file systems need polling."""

from __future__ import annotations

from guardd.daemon.watch import fs_type, needs_polling, parse_mountinfo

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
