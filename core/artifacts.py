"""Where a model version's bytes live: one folder per version under the models dir.

A version is written into a hidden temporary folder, sealed with a
``MANIFEST.json`` (every file's size and SHA-256) written last, then renamed
into place. A crash before the rename leaves only a ``.tmp-*`` folder, which
never looks like a version and is swept on the next start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from refitd.core.errors import ArtifactError

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
META = "refitd.json"  # labels, max_length, model files, calibration: what a runtime needs


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactStore:
    """Version folders under ``root``; written atomically, verified on read."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, version: str) -> Path:
        """The folder of a complete version; ArtifactError if it is missing or unsealed."""
        folder = self.root / version
        if not (folder / MANIFEST).is_file():
            raise ArtifactError(version, f"no sealed artifact at {folder}")
        return folder

    def staging(self, label: str = "run") -> Path:
        """A fresh scratch folder on the store's filesystem; fill it, then :meth:`publish` it."""
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self.root / f".tmp-{label}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir()
        return scratch

    def publish(self, version: str, staged: Path) -> Path:
        """Seal a staged folder and rename it to ``root/version`` in one step."""
        final = self.root / version
        if final.exists():
            raise ArtifactError(version, f"{final} already exists; versions are immutable")
        self._seal(staged)
        os.replace(staged, final)
        _fsync_dir(self.root)
        log.info("artifact %s written to %s", version, final)
        return final

    @contextmanager
    def writer(self, version: str) -> Iterator[Path]:
        """Yield a scratch folder; on success seal it and move it to ``root/version``."""
        scratch = self.staging(version)
        try:
            yield scratch
            self.publish(version, scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    def _seal(self, folder: Path) -> None:
        files = {}
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
            files[str(f.relative_to(folder))] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
        if META not in files:
            raise ArtifactError(folder.name, f"{META} is missing; a runtime could not load this version")
        manifest = folder / MANIFEST
        manifest.write_text(json.dumps({"files": files}, indent=2))
        with manifest.open("rb") as fh:
            os.fsync(fh.fileno())

    def verify(self, version: str) -> None:
        """Check every file against the manifest; ArtifactError naming the first mismatch."""
        folder = self.path(version)
        files = json.loads((folder / MANIFEST).read_text())["files"]
        for name, expected in files.items():
            f = folder / name
            if not f.is_file():
                raise ArtifactError(version, f"{name} is listed in the manifest but missing")
            if f.stat().st_size != expected["bytes"] or _sha256(f) != expected["sha256"]:
                raise ArtifactError(version, f"{name} does not match its manifest checksum")

    def meta(self, version: str) -> dict[str, Any]:
        return read_meta(self.path(version))

    def sweep(self, *, older_than_s: float = 24 * 3600) -> list[Path]:
        """Remove scratch folders left by a crash (untouched for ``older_than_s``); return them."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_s
        removed = [p for p in self.root.glob(".tmp-*") if p.is_dir() and p.stat().st_mtime < cutoff]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
            log.warning("removed unfinished artifact folder %s", p)
        return removed


def read_meta(folder: Path) -> dict[str, Any]:
    """The runtime description of an artifact folder (labels, files, max_length)."""
    try:
        return json.loads((Path(folder) / META).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(Path(folder).name, f"cannot read {META}: {exc}") from exc
