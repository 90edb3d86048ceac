"""The shared folder beside the versions (``<models>/reference``): files every host reads that belong to no
version — the reference dataset a refit starts from (:mod:`refitd.core.reference`) and the traffic a refit's
champion is checked for drift against (:mod:`refitd.daemon.drift.baseline`).

A file is written to a synced scratch name and renamed into place, so a reader sees the old bytes or the new,
never a part; ``shared_add`` publishes only where no file of that name is yet (the first writer wins, by a hard
link, or an exclusively created claim where there are none). The artifact store's sweep removes scratch files a
killed writer left. :class:`~refitd.core.objectstore.ObjectStoreArtifacts` keeps this API over a bucket.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from refitd.core.errors import ArtifactError
from refitd.core.files import fsync_dir, place_new

SHARED_DIR = "reference"  # beside the version folders, never one of them
STORE_SCRATCH = ".tmp-"  # a file or folder being written; never read, swept once stale


def _claim(folder: Path, name: str) -> Path:
    """The file whose exclusive creation publishes shared ``name`` where there are no hard links (``place_new``)."""
    return folder / f"{STORE_SCRATCH}{name}.claim"


class SharedFolder:
    """The shared files of a store whose versions live under ``root`` (a local folder)."""

    root: Path

    def shared_read(self, name: str) -> bytes | None:
        """The bytes of ``SHARED_DIR/<name>`` beside the versions (the reference dataset), or None if never put."""
        path = self.root / SHARED_DIR / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ArtifactError(SHARED_DIR, f"cannot read {path}: {exc}") from exc

    def shared_put(self, path: Path, name: str) -> None:
        """Publish a local file under ``name`` (atomic: readers see the old bytes or the new, never a part)."""
        self._shared_place(path, name, exclusive=False)

    def shared_add(self, path: Path, name: str) -> bool:
        """Publish a local file under ``name`` unless one is there already: True when this call published it, False
        when another writer's was there first (theirs stays). Atomic, as :meth:`shared_put`."""
        return self._shared_place(path, name, exclusive=True)

    def _shared_place(self, path: Path, name: str, *, exclusive: bool) -> bool:
        """Copy ``path`` to a synced scratch file beside the shared ones, then rename it to ``name`` — or, when
        ``exclusive``, link it there, which fails when the name exists (False: the first writer wins)."""
        folder = self.root / SHARED_DIR
        scratch = folder / f"{STORE_SCRATCH}{name}-{uuid.uuid4().hex[:8]}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, scratch)
            with scratch.open("rb") as fh:
                os.fsync(fh.fileno())
            if not exclusive:
                os.replace(scratch, folder / name)
            elif not place_new(scratch, folder / name, claim=_claim(folder, name)):
                return False
            fsync_dir(folder)
            return True
        except OSError as exc:
            raise ArtifactError(SHARED_DIR, f"cannot write {folder / name}: {exc}") from exc
        finally:
            scratch.unlink(missing_ok=True)

    def shared_get(self, name: str, dest: Path) -> None:
        """Copy a shared file to ``dest`` (an OSError or ArtifactError when it cannot)."""
        shutil.copyfile(self.root / SHARED_DIR / name, dest)

    def shared_files(self, prefix: str) -> dict[str, float]:
        """The shared files whose names start with ``prefix`` (never a scratch copy): name → last modified (epoch s)."""
        folder = self.root / SHARED_DIR
        try:
            return {p.name: p.stat().st_mtime for p in folder.glob(f"{prefix}*") if p.is_file()}
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ArtifactError(SHARED_DIR, f"cannot list {folder}: {exc}") from exc

    def shared_remove(self, name: str) -> None:
        """Delete a shared file, and the claim that published it where there are no hard links."""
        folder = self.root / SHARED_DIR
        try:
            (folder / name).unlink(missing_ok=True)
            _claim(folder, name).unlink(missing_ok=True)
        except OSError as exc:
            raise ArtifactError(SHARED_DIR, f"cannot remove {folder / name}: {exc}") from exc
