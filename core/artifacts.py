"""Where a model version's bytes live, and what they are: one folder per version under the models dir.

The artifact format has its home here: the file names of a version folder and
:class:`ArtifactMeta`, the ``refitd.json`` a runtime reads to serve it.

A version is written into a hidden ``.tmp-*`` folder, sealed with a
``MANIFEST.json`` (every file's size and SHA-256) written last, then renamed
into place, so a folder named like a version is always complete. Readers
verify a folder against its manifest before they load it (:meth:`ArtifactStore.verify`).
A crash before the rename leaves only a ``.tmp-*`` folder, which never looks
like a version; the daemon sweeps those on start (``core/registration.py``, which
also sets aside a sealed folder that no registry row names).

The versions may instead live in an object store (``storage.models_url = "s3://bucket/prefix"``):
:mod:`refitd.core.objectstore` keeps the same API and the same rules there (manifest uploaded
last, downloads checked against it into a local cache). Files that belong to no version (the reference
dataset, published drift references) sit beside the versions: :mod:`refitd.core.shared_folder`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from refitd.core.errors import ArtifactError, validation_problems
from refitd.core.files import fsync_dir, sha256_file, untouched_since
from refitd.core.shared_folder import STORE_SCRATCH, SHARED_DIR, SharedFolder

if TYPE_CHECKING:
    from refitd.core.settings import Settings

log = logging.getLogger(__name__)

# The files of a version folder.
MANIFEST = "MANIFEST.json"  # every file's size and SHA-256; written last
META = "refitd.json"  # ArtifactMeta: what a runtime needs to serve the version
MODEL_FILE = "model.onnx"  # fp32 graph: inputs input_ids, attention_mask; outputs OUTPUTS
INT8_FILE = "model.int8.onnx"  # the same graph with INT8 weights
TOKENIZER_FILE = "tokenizer.json"  # the `tokenizers` file the runtime encodes with
HF_DIR = "hf"  # the Hugging Face checkpoint (a refit warm-starts from it)
CONFIG_FILE = "config.json"  # the training configuration
METRICS_FILE = "metrics.json"
LINEAGE_FILE = "lineage.json"
HISTORY_FILE = "train_history.json"
TRAIN_ROWS_FILE = "train_rows.parquet"  # exactly the rows trained on (the drift reference)
FROZEN_LOGITS_FILE = "frozen_logits.npz"  # fp32 logits on the frozen test set, keyed by its digest (a later refit reuses them)


FORMAT = 1  # the version of ArtifactMeta this refitd writes and reads
OUTPUTS = ("logits", "embedding")  # the graph outputs a runtime reads, in this order
KEEP_S = 24 * 3600  # scratch and set-aside folders untouched this long are removed by a sweep
_ORPHAN = ".orphan-"


class Calibration(BaseModel):
    """Temperature scaling of the logits (and how it was fitted)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    temperature: float = Field(default=1.0, gt=0, allow_inf_nan=False)


class ArtifactMeta(BaseModel):
    """``refitd.json``: what a runtime needs to serve a version. Every file it names lies inside the folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[1] = FORMAT
    labels: tuple[str, ...] = Field(min_length=2)
    max_length: int = Field(gt=0, le=8192)
    model_file: str = MODEL_FILE
    int8_file: str | None = None
    serve_file: str | None = None  # the file served at precision "auto"; model_file when None
    tokenizer_file: str = TOKENIZER_FILE
    outputs: tuple[str, ...] = OUTPUTS
    embedding_dim: int = Field(gt=0)
    calibration: Calibration = Calibration()

    @field_validator("labels")
    @classmethod
    def _distinct_labels(cls, labels: tuple[str, ...]) -> tuple[str, ...]:
        if any(not label for label in labels) or len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct and non-empty; got {list(labels)}")
        return labels

    @field_validator("model_file", "int8_file", "serve_file", "tokenizer_file")
    @classmethod
    def _inside_folder(cls, name: str | None) -> str | None:
        if name is not None:
            path = PurePosixPath(name)
            if not name or path.is_absolute() or ".." in path.parts:
                raise ValueError(f"{name!r} is not a file name inside the version folder")
        return name

    @field_validator("outputs")
    @classmethod
    def _has_outputs(cls, outputs: tuple[str, ...]) -> tuple[str, ...]:
        if outputs[: len(OUTPUTS)] != OUTPUTS:
            raise ValueError(f"the graph must output {list(OUTPUTS)} first; got {list(outputs)}")
        return outputs

    @model_validator(mode="after")
    def _serve_file_is_a_model(self) -> ArtifactMeta:
        if self.serve_file not in (None, self.model_file, self.int8_file):
            raise ValueError(f"serve_file {self.serve_file!r} is neither model_file nor int8_file")
        return self

    @property
    def files(self) -> list[str]:
        """The files a runtime opens: tokenizer and graphs."""
        return [self.tokenizer_file, self.model_file] + ([self.int8_file] if self.int8_file else [])

    def model_for(self, precision: str) -> str:
        """The graph to serve at ``precision`` ('auto' | 'fp32' | 'int8')."""
        if precision == "fp32":
            return self.model_file
        if precision == "int8":
            if self.int8_file is None:
                raise ArtifactError("-", "serving.precision = 'int8' but this version has no INT8 export")
            return self.int8_file
        return self.serve_file or self.model_file

    def write(self, folder: Path) -> Path:
        path = Path(folder) / META
        path.write_text(self.model_dump_json(indent=2))
        return path

    @classmethod
    def read(cls, folder: Path, *, version: str | None = None) -> ArtifactMeta:
        """The meta of ``folder``; ArtifactError naming the version and the problem when it cannot be used."""
        folder = Path(folder)
        version = version or folder.name
        try:
            data = json.loads((folder / META).read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(version, f"cannot read {META}: {exc}") from exc
        if not isinstance(data, dict):
            raise ArtifactError(version, f"{META} is not a JSON object")
        if data.get("format") != FORMAT:
            raise ArtifactError(version, f"{META} is format {data.get('format')!r}; this refitd reads format "
                                         f"{FORMAT} (train a new version with `refitd refit`)")
        try:
            meta = cls.model_validate(data)
        except ValidationError as exc:
            raise ArtifactError(version, f"{META} is invalid: {validation_problems(exc, subject=META)}") from None
        for name in meta.files:
            if not _resolved_inside(folder, name):
                raise ArtifactError(version, f"{META} names {name!r}, which resolves outside the version folder")
        return meta


def _resolved_inside(folder: Path, name: str) -> bool:
    """Whether ``folder / name`` stays inside ``folder`` once links are followed."""
    return (folder / name).resolve().is_relative_to(folder.resolve())


def manifest_files(text: bytes | str, version: str) -> dict[str, dict]:
    """A manifest's ``files`` (name → {bytes, sha256}); ArtifactError unless each names a file inside the folder."""
    try:
        files = {str(name): {"bytes": int(e["bytes"]), "sha256": str(e["sha256"])}
                 for name, e in json.loads(text)["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(version, f"cannot read {MANIFEST}: {exc}") from exc
    for name in files:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or name in ("", MANIFEST):
            raise ArtifactError(version, f"{MANIFEST} lists {name!r}, which is not a file inside the version folder")
    return files


def check_files(folder: Path, version: str, files: dict[str, dict]) -> None:
    """Every listed file is in ``folder`` with its size and SHA-256; ArtifactError naming the first that is not."""
    for name, expected in files.items():
        f = folder / name
        if not _resolved_inside(folder, name) or not f.is_file():
            raise ArtifactError(version, f"{name} is listed in the manifest but missing")
        if f.stat().st_size != expected["bytes"] or sha256_file(f) != expected["sha256"]:
            raise ArtifactError(version, f"{name} does not match its manifest checksum")


class ArtifactStore(SharedFolder):
    """Version folders under ``root``; written atomically, verified on read.

    Build it with :meth:`from_settings`: when ``storage.models_url`` is an object-store URL that
    gives an :class:`~refitd.core.objectstore.ObjectStoreArtifacts`, the same API over a bucket
    with a local cache; readers get a local verified folder either way.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        """The store ``storage.models_url`` names (a local folder, or an object store cached under <home>)."""
        url = settings.storage.models_url
        if url is not None and "://" in url:  # the settings let only object-store URLs keep a scheme
            from refitd.core.objectstore import ObjectStoreArtifacts  # fsspec is loaded only when it is needed

            return ObjectStoreArtifacts(url, cache=settings.models_cache_dir)
        return cls(settings.models_dir)

    def uri(self, version: str) -> str:
        """Where ``version`` is published: a registry row's ``artifact_uri``."""
        return str(self.root / version)

    def exists(self, version: str) -> bool:
        """Whether a version of this name is published (registered or not)."""
        return (self.root / version).exists()

    def path(self, version: str) -> Path:
        """The local folder of a complete version; ArtifactError if it is missing or unsealed."""
        folder = self.root / version
        if not (folder / MANIFEST).is_file():
            raise ArtifactError(version, f"no sealed artifact at {folder}")
        return folder

    def versions(self) -> list[str]:
        """Names of the sealed version folders (hidden scratch and set-aside folders excluded)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if not p.name.startswith(".") and (p / MANIFEST).is_file())

    def staging(self, label: str = "run") -> Path:
        """A fresh local scratch folder beside the version folders; fill it, then :meth:`publish` it."""
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self._scratch_name(label)
        scratch.mkdir()
        return scratch

    def publish(self, version: str, staged: Path) -> Path:
        """Seal a staged folder and publish it as ``version`` in one step."""
        self.seal(staged)
        return self.place(version, staged)

    def seal(self, staged: Path) -> None:
        """Check the meta, then write the manifest (every file's size and SHA-256) last, all fsynced."""
        meta = ArtifactMeta.read(staged)
        for name in meta.files:
            if not (staged / name).is_file():
                raise ArtifactError(staged.name, f"{META} names {name}, which is not in the folder")
        files = {}
        manifest = staged / MANIFEST
        for f in sorted(p for p in staged.rglob("*") if p.is_file() and p != manifest):
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
            files[f.relative_to(staged).as_posix()] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
        manifest.write_text(json.dumps({"files": files}, indent=2))
        with manifest.open("rb") as fh:
            os.fsync(fh.fileno())

    def place(self, version: str, staged: Path) -> Path:
        """Publish a sealed staged folder as ``version`` (atomic: it appears whole or not at all); its local folder."""
        final = self.root / version
        if self.exists(version):
            raise ArtifactError(version, f"{self.uri(version)} already exists; versions are immutable")
        if not (staged / MANIFEST).is_file():
            raise ArtifactError(version, f"{staged} is not a sealed staging folder")
        self._upload(version, staged)
        os.replace(staged, final)
        fsync_dir(self.root)
        log.info("artifact %s written to %s", version, self.uri(version))
        return final

    def withdraw(self, version: str, staged: Path) -> None:
        """Undo :meth:`place`: unpublish ``version``, move its folder back to ``staged`` (its registration failed)."""
        self._unpublish(version)
        os.replace(self.root / version, staged)
        fsync_dir(self.root)
        log.warning("artifact %s withdrawn to %s: its registration did not commit", version, staged)

    def set_aside(self, version: str) -> PurePath:
        """Move a version out of the version namespace; a sweep removes it after ``KEEP_S``."""
        aside = self.root / self._aside_name(version)
        os.replace(self.root / version, aside)
        os.utime(aside)  # the sweep's clock starts now, not when the folder was sealed
        fsync_dir(self.root)
        return aside

    @contextmanager
    def writer(self, version: str) -> Iterator[Path]:
        """Yield a scratch folder; on success seal it and publish it as ``version``."""
        scratch = self.staging(version)
        try:
            yield scratch
            self.publish(version, scratch)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise

    def verify(self, version: str) -> Path:
        """The version's local folder once every file matches the manifest; ArtifactError naming the first mismatch.

        Hashes every byte (about 0.2 s for a 200 MB version from the page cache): for loading and
        swapping, never per request.
        """
        folder = self.path(version)
        start = time.perf_counter()
        try:
            text = (folder / MANIFEST).read_bytes()
        except OSError as exc:
            raise ArtifactError(version, f"cannot read {MANIFEST}: {exc}") from exc
        files = manifest_files(text, version)
        check_files(folder, version, files)
        log.info("artifact %s verified (%d files) in %.2f s", version, len(files), time.perf_counter() - start)
        return folder

    def meta(self, version: str) -> ArtifactMeta:
        return ArtifactMeta.read(self.path(version), version=version)

    def sweep(self, *, older_than_s: float = KEEP_S) -> list[PurePath]:
        """Remove scratch folders left by a crash and set-aside folders, and unfinished copies of the shared
        reference files, untouched for ``older_than_s``."""
        if not self.root.is_dir():
            return []
        cutoff = time.time() - older_than_s
        removed = [p for p in self.root.iterdir()
                   if p.name.startswith((STORE_SCRATCH, _ORPHAN)) and untouched_since(p, cutoff)]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
            log.warning("removed unfinished artifact folder %s", p)
        shared = self.root / SHARED_DIR  # a publish of the reference killed mid-copy
        copies = [p for p in shared.iterdir()
                  if p.name.startswith(STORE_SCRATCH) and untouched_since(p, cutoff, folder=False)] if shared.is_dir() else []
        for p in copies:
            p.unlink(missing_ok=True)
            log.warning("removed unfinished copy %s", p)
        return removed + copies

    def _scratch_name(self, label: str) -> Path:
        """A fresh hidden name a sweep removes once it is stale."""
        return self.root / f"{STORE_SCRATCH}{label}-{uuid.uuid4().hex[:8]}"

    @staticmethod
    def _aside_name(version: str) -> str:
        return f"{_ORPHAN}{version}-{uuid.uuid4().hex[:8]}"

    def _upload(self, version: str, staged: Path) -> None:
        """Publish the staged files elsewhere before the rename; locally the rename alone publishes."""

    def _unpublish(self, version: str) -> None:
        """Undo :meth:`_upload`."""
