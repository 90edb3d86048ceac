"""Model versions in an object store (``s3://bucket/prefix``), through fsspec.

:class:`ObjectStore` moves objects (names relative to the URL, ``v3/model.onnx``) and knows nothing
of the artifact format. :class:`ObjectStoreArtifacts` is the
:class:`~refitd.core.artifacts.ArtifactStore` over it, which ``ArtifactStore.from_settings`` builds
when ``storage.models_url`` is such a URL.

The endpoint and credentials come from the client's own chain, never from refitd's settings:
``AWS_ENDPOINT_URL`` (an S3-compatible server), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_REGION``, ``AWS_PROFILE`` with the files ``AWS_SHARED_CREDENTIALS_FILE`` /
``AWS_CONFIG_FILE`` name, or an instance role. Every failure of the client is an ``OSError``
(``FileNotFoundError`` for a missing object); listings are never cached, so a version another host
published is seen on the next call.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePath, PurePosixPath
from typing import TypeVar

import fsspec

from refitd.core.artifacts import KEEP_S, MANIFEST, ArtifactStore, check_files, manifest_files
from refitd.core.errors import ArtifactError
from refitd.core.shared_folder import SHARED_DIR

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextmanager
def _as_oserror(what: str) -> Iterator[None]:
    try:
        yield
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - the client's own (botocore's ClientError, EndpointConnectionError…)
        raise OSError(f"{what}: {type(exc).__name__}: {exc}") from exc


class ObjectStore:
    """The objects under one URL; each call is one or a few requests, never cached."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        # A fresh client per store: fsspec's instance cache would keep an endpoint read from an older environment.
        self.fs, self.base = fsspec.core.url_to_fs(self.url, skip_instance_cache=True, use_listings_cache=False)

    def uri(self, name: str) -> str:
        return f"{self.url}/{name}"

    def key(self, name: str) -> str:
        """The path the client uses (``bucket/prefix/name``)."""
        return f"{self.base}/{name}"

    def read(self, name: str) -> bytes:
        with _as_oserror(f"cannot read {self.uri(name)}"):
            return self.fs.cat_file(self.key(name))

    def exists(self, name: str) -> bool:
        with _as_oserror(f"cannot look up {self.uri(name)}"):
            return bool(self.fs.exists(self.key(name)))

    def upload(self, path: Path, name: str) -> None:
        with _as_oserror(f"cannot upload {path} to {self.uri(name)}"):
            self.fs.put_file(str(path), self.key(name))

    def download(self, name: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _as_oserror(f"cannot download {self.uri(name)}"):
            self.fs.get_file(self.key(name), str(path))

    def objects(self, folder: str = "") -> dict[str, datetime | None]:
        """Every object under the URL, or under its ``folder/``: name → last modified (one listing)."""
        top = self.key(folder) if folder else self.base
        with _as_oserror(f"cannot list {self.uri(folder) if folder else self.url}"):
            try:
                found = self.fs.find(top, detail=True)
            except FileNotFoundError:
                return {}
        prefix = self.base + "/"
        return {key.removeprefix(prefix): info.get("LastModified") or info.get("mtime")
                for key, info in found.items() if key.startswith(top + "/")}

    def delete(self, name: str) -> None:
        """Delete one object (gone already is fine)."""
        with _as_oserror(f"cannot delete {self.uri(name)}"):
            try:
                self.fs.rm_file(self.key(name))
            except FileNotFoundError:
                pass

    def copy(self, source: str, dest: str) -> None:
        """Copy every object under ``source/`` to ``dest/`` (server-side)."""
        names = list(self.objects(source))
        with _as_oserror(f"cannot copy {self.uri(source)} to {self.uri(dest)}"):
            for name in names:
                self.fs.copy(self.key(name), self.key(dest + name.removeprefix(source)))

    def remove(self, folder: str, *, first: str | None = None) -> None:
        """Delete every object under ``folder/``; ``first`` (a name inside it) before the others."""
        names = list(self.objects(folder))
        head = f"{folder}/{first}" if first else None
        with _as_oserror(f"cannot remove {self.uri(folder)}"):
            if head in names:
                self.fs.rm_file(self.key(head))
            rest = [self.key(n) for n in names if n != head]
            if rest:
                self.fs.rm(rest)


class ObjectStoreArtifacts(ArtifactStore):
    """The artifact store with its versions in an object store: ``url/<version>/…``, cached under ``cache``.

    Publishing uploads every file of a sealed staging folder, then its manifest; the version exists
    from the manifest's upload on, so a reader never sees a partial one. Readers get a local folder:
    ``cache/<version>``, downloaded into a scratch folder and renamed once every file matched the
    published manifest. A cached copy is used while its manifest is byte-identical to the published
    one (one small GET; the cached one alone when the store cannot be reached) and is re-hashed on
    every :meth:`verify`; a damaged copy is downloaded again. The cache therefore needs no fsync.
    """

    def __init__(self, url: str, *, cache: Path) -> None:
        super().__init__(cache)
        self.remote = ObjectStore(url)

    def uri(self, version: str) -> str:
        return self.remote.uri(version)

    def exists(self, version: str) -> bool:
        return self._call(version, lambda r: r.exists(f"{version}/{MANIFEST}"))

    def path(self, version: str) -> Path:
        """The cached folder of a published version, downloaded and checked first unless it is current."""
        return self._fetch(version, rehash=False)

    def verify(self, version: str) -> Path:
        start = time.perf_counter()
        folder = self._fetch(version, rehash=True)
        log.info("artifact %s verified in %.2f s", version, time.perf_counter() - start)
        return folder

    def versions(self) -> list[str]:
        names = self._call("-", lambda r: r.objects())
        return sorted(name.removesuffix(f"/{MANIFEST}") for name in names
                      if name.endswith(f"/{MANIFEST}") and name.count("/") == 1 and not name.startswith("."))

    def set_aside(self, version: str) -> PurePath:
        aside = self._aside_name(version)

        def move(remote: ObjectStore) -> None:
            remote.copy(version, aside)
            remote.remove(version, first=MANIFEST)

        self._call(version, move)
        self._discard(self.root / version)
        return PurePosixPath(self.remote.key(aside))

    def sweep(self, *, older_than_s: float = KEEP_S) -> list[PurePath]:
        """Also remove, from the store, set-aside folders and uploads that never got their manifest."""
        cutoff = time.time() - older_than_s
        return super().sweep(older_than_s=older_than_s) + self._call("-", lambda r: self._sweep_remote(r, cutoff))

    def shared_read(self, name: str) -> bytes | None:
        def read(remote: ObjectStore) -> bytes | None:
            try:
                return remote.read(f"{SHARED_DIR}/{name}")
            except FileNotFoundError:
                return None

        return self._call(SHARED_DIR, read)

    def shared_put(self, path: Path, name: str) -> None:
        self._call(SHARED_DIR, lambda r: r.upload(path, f"{SHARED_DIR}/{name}"))  # one PUT: whole or not at all

    def shared_add(self, path: Path, name: str) -> bool:
        """Look, then PUT: two writers in the same instant may both upload (the later object stays); callers
        write what they would both have computed from the same database."""
        def add(remote: ObjectStore) -> bool:
            if remote.exists(f"{SHARED_DIR}/{name}"):
                return False
            remote.upload(path, f"{SHARED_DIR}/{name}")
            return True

        return self._call(SHARED_DIR, add)

    def shared_get(self, name: str, dest: Path) -> None:
        self._call(SHARED_DIR, lambda r: r.download(f"{SHARED_DIR}/{name}", dest))

    def shared_files(self, prefix: str) -> dict[str, float]:
        """As the folder store's; an object whose listing gives no time reads as modified now (never as old)."""
        found = self._call(SHARED_DIR, lambda r: r.objects(SHARED_DIR))
        out = {}
        for key, when in found.items():
            name = key.removeprefix(f"{SHARED_DIR}/")
            if not name.startswith(prefix) or "/" in name:
                continue
            if isinstance(when, datetime):
                out[name] = when.timestamp()
            elif isinstance(when, int | float):
                out[name] = float(when)
            else:
                log.warning("%s lists no time for %s (%r): kept as if written now", self.remote.url, key, when)
                out[name] = time.time()
        return out

    def shared_remove(self, name: str) -> None:
        self._call(SHARED_DIR, lambda r: r.delete(f"{SHARED_DIR}/{name}"))

    def _upload(self, version: str, staged: Path) -> None:
        def upload(remote: ObjectStore) -> None:
            remote.remove(version)  # what an upload killed before its manifest left under this name
            for f in sorted(p for p in staged.rglob("*") if p.is_file() and p != staged / MANIFEST):
                remote.upload(f, f"{version}/{f.relative_to(staged).as_posix()}")
            remote.upload(staged / MANIFEST, f"{version}/{MANIFEST}")  # last: the version exists from here

        self._call(version, upload)
        self._discard(self.root / version)  # a stale cached copy of a name that was set aside

    def _unpublish(self, version: str) -> None:
        self._call(version, lambda r: r.remove(version, first=MANIFEST))

    def _call(self, version: str, call: Callable[[ObjectStore], T]) -> T:
        """``call`` on the object store; its failures become an ArtifactError naming the version."""
        try:
            return call(self.remote)
        except OSError as exc:
            raise ArtifactError(version, f"object store {self.remote.url}: {exc}") from exc

    def _fetch(self, version: str, *, rehash: bool) -> Path:
        folder = self.root / version
        cached = folder / MANIFEST
        try:
            text = self.remote.read(f"{version}/{MANIFEST}")
        except FileNotFoundError:
            raise ArtifactError(version, f"no sealed artifact at {self.uri(version)}") from None
        except OSError as exc:
            if not cached.is_file():
                raise ArtifactError(version, f"cannot read {self.uri(version)}/{MANIFEST}: {exc}") from exc
            log.warning("cannot reach %s (%s); using the cached copy of %s", self.remote.url, exc, version)
            text = cached.read_bytes()
        files = manifest_files(text, version)
        if cached.is_file() and cached.read_bytes() == text:
            if not rehash:
                return folder
            try:
                check_files(folder, version, files)
                return folder
            except ArtifactError as exc:
                log.warning("cached copy of %s is damaged (%s); downloading it again", version, exc.problem)
        self._discard(folder)  # damaged, or a copy of what an earlier publish under this name held
        return self._download(version, text, files)

    def _download(self, version: str, text: bytes, files: dict[str, dict]) -> Path:
        """Download into a scratch folder, check every file, write the manifest, rename to ``cache/<version>``."""
        scratch, final = self.staging(f"fetch-{version}"), self.root / version
        try:
            for name in files:
                try:
                    self.remote.download(f"{version}/{name}", scratch / name)
                except FileNotFoundError:
                    raise ArtifactError(version, f"{name} is listed in the manifest but missing") from None
                except OSError as exc:
                    raise ArtifactError(version, f"cannot download {name}: {exc}") from exc
            check_files(scratch, version, files)
            (scratch / MANIFEST).write_bytes(text)
            os.replace(scratch, final)
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            if (final / MANIFEST).is_file() and (final / MANIFEST).read_bytes() == text:
                return final  # a concurrent reader renamed its copy first, checked the same way
            raise ArtifactError(version, f"cannot place the download in {final}: {exc}") from exc
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        log.info("artifact %s downloaded from %s (%d files)", version, self.uri(version), len(files))
        return final

    def _discard(self, folder: Path) -> None:
        """Remove a cached copy, renamed out of the version namespace first so no reader sees it half-deleted."""
        doomed = self._scratch_name(f"discard-{folder.name}")
        try:
            os.replace(folder, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    @staticmethod
    def _sweep_remote(remote: ObjectStore, cutoff: float) -> list[PurePath]:
        """Top-level folders without a manifest (or hidden: set aside) whose newest object is older than ``cutoff``;
        never the shared files' folder."""
        newest: dict[str, float] = {}
        sealed: set[str] = set()
        for name, modified in remote.objects().items():
            folder, _, rest = name.partition("/")
            stamp = modified.timestamp() if modified is not None else time.time()
            newest[folder] = max(newest.get(folder, 0.0), stamp)
            if rest == MANIFEST and not folder.startswith("."):
                sealed.add(folder)
        stale = sorted(f for f, t in newest.items() if f not in sealed and f != SHARED_DIR and t < cutoff)
        for folder in stale:
            remote.remove(folder)
        return [PurePosixPath(remote.key(f)) for f in stale]
