"""File primitives the stores build on: content digests, durable renames, a name taken by one writer only, and
whether a leftover is stale enough to sweep."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV}  # os.link: no hard links here


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename or link in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def place_new(scratch: Path, target: Path, *, claim: Path) -> bool:
    """Give ``scratch`` the name ``target`` unless it exists (False): a hard link, which fails when it does; on a
    filesystem without hard links (FUSE mounts, vfat, some SMB shares), the exclusively created file ``claim``
    decides who renames (it stays; a writer that died between claim and rename leaves the name to nobody until a
    sweep removes the claim)."""
    try:
        os.link(scratch, target)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in NO_LINKS:
            raise
    try:
        os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    if target.exists():
        return False
    os.replace(scratch, target)
    return True


def untouched_since(path: Path, cutoff: float, *, folder: bool = True) -> bool:
    """A folder (a file with ``folder=False``) last touched before ``cutoff``; False for one gone since it was
    listed (another process's scratch renamed into place between the listing and this look)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return (stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)) and st.st_mtime < cutoff
