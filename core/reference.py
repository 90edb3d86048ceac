"""The reference dataset: the labelled data every refit starts from, kept as state in the home.

The first use (``refitd init``, with ``--data FILE`` or the bundled corpus) stores a snapshot in
``<home>/data/reference-<hash>.parquet`` — text, label and the frozen split of every row — with
``reference.json`` beside it: where it came from, its digest, rows per label and split sizes.
Refits and drift references read that snapshot, never the configured path again, so a file that
changes on disk after init changes nothing, and the frozen test set stays the same set from
version to version. Replacing it is explicit (``refitd data replace FILE``) and recorded as an event.

Both files are also published beside the model versions (see :mod:`refitd.core.reference_info`), and
that copy is the one that counts: a home whose copy differs (a Prefect worker's own REFITD_HOME, a host
that did not run the `data replace`) takes the published one before it refits, so every host trains on
the same rows. A home stored before publishing keeps its own copy until ``refitd data publish``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pandas as pd

from refitd.core.datasets import digest_frame, load_configured
from refitd.core.artifacts import ArtifactStore
from refitd.core.errors import ArtifactError, ConfigError
from refitd.core.files import sha256_file
from refitd.core.reference_info import META_FILE, SCRATCH_PREFIX, ReferenceInfo, folder, info, published
from refitd.core.registry import served_labels
from refitd.core.settings import Settings
from refitd.core.shared_folder import SHARED_DIR
from refitd.core.tables import ModelVersion, utcnow

COLUMNS = ["text", "label", "split"]
FIRST_USE_HERE = "first use on this host"  # a home-only copy of configured data (check_belongs), never published

log = logging.getLogger(__name__)


def from_settings(settings: Settings) -> tuple[pd.DataFrame, str]:
    """Read what the settings name (``training.data``, else the bundled corpus's ``training.topics``)."""
    t = settings.training
    frame = load_configured(data=t.data, text_column=t.text_column, label_column=t.label_column, topics=t.topics,
                            validation_fraction=t.validation_fraction, test_fraction=t.test_fraction)
    frame = frame[frame["split"] != "stream"]  # the bundled corpus's production-traffic share is not reference
    source = str(t.data) if t.data is not None else f"bundled corpus (topics {', '.join(t.topics) or 'all'})"
    return frame[COLUMNS].reset_index(drop=True), source


def store(settings: Settings, frame: pd.DataFrame, *, source: str, actor: str, reason: str,
          new_label_set_for: str | None = None, publish: bool = True) -> ReferenceInfo:
    """Publish the rows beside the models, then their description (the one switch every host reads), then keep
    the same in this home: the rows under a name of their own bytes' hash, then the description that points at
    them, whose atomic replace is this home's switch. A publish that fails changes nothing. ``publish=False``
    keeps them in this home only."""
    out = folder(settings)
    out.mkdir(parents=True, exist_ok=True)
    frame = frame[COLUMNS].reset_index(drop=True)
    previous = _readable(settings)
    fd, tmp = tempfile.mkstemp(prefix=f"{SCRATCH_PREFIX}-", suffix=".parquet", dir=out)
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        sha = sha256_file(Path(tmp))
        meta = ReferenceInfo(source=source, file=f"reference-{sha[:16]}.parquet", digest=digest_frame(frame),
                             sha256=sha, rows=len(frame),
                             labels={str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()},
                             splits={str(k): int(v) for k, v in frame["split"].value_counts().sort_index().items()},
                             stored_at=utcnow(), actor=actor, reason=reason, new_label_set_for=new_label_set_for)
        os.replace(tmp, out / meta.file)  # named by its bytes: the same name holds the same rows
    finally:
        Path(tmp).unlink(missing_ok=True)
    try:
        if publish:
            _publish(settings, meta)
    except ArtifactError as exc:
        if not _published_as(settings, meta):  # a timeout after the store took it still counts as published
            if previous is None or previous.file != meta.file:
                (out / meta.file).unlink(missing_ok=True)
            raise ConfigError(f"cannot publish the reference dataset beside the models: {exc.problem}; nothing was "
                              "changed") from None
    _keep(settings, meta, previous)
    return meta


def publish_home(settings: Settings) -> ReferenceInfo:
    """Publish this home's reference where nothing is published yet (a home stored before publishing); a
    description from before files were hashed gets its file's hash first."""
    local = info(settings)
    if local is None:
        raise ConfigError(f"this home has no reference dataset to publish ({folder(settings) / META_FILE} is missing)")
    if local.reason.startswith(FIRST_USE_HERE):
        raise ConfigError(f"this home's reference was taken from its own configured data ({local.source}) with this "
                          "host's split fractions: publish from the home that ran `refitd init`, or store the data "
                          "for every host with `refitd data replace FILE`")
    try:
        shared = published(settings)
    except ArtifactError as exc:
        raise ConfigError(f"cannot read the reference dataset published beside the models: {exc.problem}") from None
    if shared == local:
        return local
    if shared is not None:
        raise ConfigError(f"another reference dataset is published beside the models ({shared.source}, digest "
                          f"{shared.digest[:12]}, stored {shared.stored_at:%Y-%m-%d %H:%M} by {shared.actor}); this "
                          f"home's ({local.source}, digest {local.digest[:12]}) is not published over it: `refitd data "
                          "replace FILE` replaces it on purpose")
    if not _intact(settings, local):
        raise ConfigError(f"{folder(settings) / local.file} does not match its digest in {META_FILE}; restore it or "
                          "run `refitd data replace FILE`")
    if local.sha256 is None:
        hashed = local.model_copy(update={"sha256": sha256_file(folder(settings) / local.file)})
        _keep(settings, hashed, local)
        local = hashed
    try:
        _publish(settings, local)
    except ArtifactError as exc:
        raise ConfigError(f"cannot publish the reference dataset beside the models: {exc.problem}") from None
    return local


def _publish(settings: Settings, meta: ReferenceInfo) -> None:
    """Put this home's rows file, then the description naming it, beside the models."""
    store = ArtifactStore.from_settings(settings)
    store.shared_put(folder(settings) / meta.file, meta.file)
    fd, tmp = tempfile.mkstemp(prefix=f"{SCRATCH_PREFIX}-publish-", suffix=".json", dir=folder(settings))
    os.close(fd)
    try:
        Path(tmp).write_text(meta.model_dump_json(indent=2))
        store.shared_put(Path(tmp), META_FILE)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _published_as(settings: Settings, meta: ReferenceInfo) -> bool:
    try:
        return published(settings) == meta
    except ArtifactError:
        return False


def _keep(settings: Settings, meta: ReferenceInfo, previous: ReferenceInfo | None) -> None:
    """Point this home's description at ``meta`` (its rows file is in place) and drop the rows it replaced."""
    out = folder(settings)
    _atomic_write(out / META_FILE, lambda p: p.write_text(meta.model_dump_json(indent=2)))
    if previous is not None and previous.file != meta.file:
        (out / previous.file).unlink(missing_ok=True)


def sync(settings: Settings) -> ReferenceInfo | None:
    """This home's reference once it is the published one: a published reference this home lacks, or describes
    otherwise, is downloaded and checked first. While the store cannot be read, this home's copy stands; with no
    copy that is an error (a first use then would publish data over what it cannot see). With nothing published,
    this home's copy (stored before publishing: `refitd data publish`) or None. An unreadable description in
    this home is replaced by the published one, and is an error without one."""
    try:
        local, unreadable = info(settings), None
    except ConfigError as exc:
        local, unreadable = None, exc
    try:
        shared = published(settings)
    except ArtifactError as exc:
        if unreadable is not None:
            raise unreadable from None
        if local is None:
            raise ConfigError(f"cannot read the reference dataset published beside the models ({exc.problem}), and "
                              f"this home has none ({folder(settings) / META_FILE})") from None
        log.warning("cannot read the published reference (%s); using this home's", exc.problem)
        return local
    if shared is None:
        if unreadable is not None:
            raise unreadable
        return local
    if local == shared and _intact(settings, local):
        return local
    _fetch(settings, shared)
    _keep(settings, shared, local)
    log.info("took the published reference dataset %s (%s, %d rows) into %s", shared.digest[:12], shared.source,
             shared.rows, folder(settings))
    return shared


def _readable(settings: Settings) -> ReferenceInfo | None:
    """This home's description, or None when it has none or it cannot be read (a store replaces it)."""
    try:
        return info(settings)
    except ConfigError:
        return None


def _shared_uri(settings: Settings) -> str:
    store = ArtifactStore.from_settings(settings)
    return f"{store.uri(SHARED_DIR)}/{META_FILE}"


def _intact(settings: Settings, meta: ReferenceInfo, path: Path | None = None) -> bool:
    """Whether the rows file is the one ``meta`` describes (its bytes' hash; its rows' digest for one stored
    before files were hashed)."""
    path = path or folder(settings) / meta.file
    try:
        if meta.sha256 is not None:
            return sha256_file(path) == meta.sha256
        return digest_frame(pd.read_parquet(path)) == meta.digest
    except (OSError, ValueError, KeyError):  # unreadable, not Parquet, or without the text / label columns
        return False


def _fetch(settings: Settings, meta: ReferenceInfo) -> None:
    """Download the published rows into this home under their own name, checked against their hash."""
    out = folder(settings)
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{meta.file}.", dir=out)
    os.close(fd)
    try:
        ArtifactStore.from_settings(settings).shared_get(meta.file, Path(tmp))
        if not _intact(settings, meta, Path(tmp)):
            raise ConfigError(f"the published reference rows {meta.file} do not match their digest "
                              f"{(meta.sha256 or meta.digest)[:12]}: run `refitd data replace FILE` on a host with "
                              "the data")
        os.replace(tmp, out / meta.file)
    except (ArtifactError, OSError) as exc:
        raise ConfigError(f"cannot take the published reference dataset {meta.file} ({meta.digest[:12]}) into "
                          f"{out}: {exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def load(settings: Settings, *, first_use: bool = True) -> pd.DataFrame:
    """The reference rows (text, label, split): the published ones, else this home's; with neither, what the
    settings name, stored (and published) when ``first_use``."""
    return load_with_info(settings, first_use=first_use)[0]


def load_with_info(settings: Settings, *, first_use: bool = True) -> tuple[pd.DataFrame, ReferenceInfo | None]:
    """:func:`load` and the description of the rows it read (None for unstored rows)."""
    for attempt in (1, 2):
        stored = sync(settings)
        if stored is None:
            frame, source = from_settings(settings)
            return frame, (store(settings, frame, source=source, actor="refitd", reason="first use")
                           if first_use else None)
        path = folder(settings) / stored.file
        try:
            frame = pd.read_parquet(path)
            intact = digest_frame(frame) == stored.digest and stored.sha256 in (None, sha256_file(path))
        except FileNotFoundError:
            if attempt == 1:
                continue  # another process in this home took a newer published reference meanwhile
            raise ConfigError(f"the reference dataset {path} is missing; restore it or run `refitd data replace "
                              "FILE`") from None
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read the reference dataset {path}: {exc!r}; restore it or run "
                              "`refitd data replace FILE`") from None
        if not intact:
            raise ConfigError(f"{path} does not match its digest in {META_FILE} ({stored.digest[:12]}); restore it "
                              "or run `refitd data replace FILE`")
        return frame, stored
    raise AssertionError("unreachable")


def check_belongs(settings: Settings, champion: ModelVersion) -> None:
    """Refuse a refit whose reference is not the champion's; on a host without one (a Prefect worker's own home),
    store the configured data first if it is the data the champion was trained on.

    The champion's refit recorded its reference's digest (``params.reference_digest``): a home with no stored
    reference reads the configured file or the bundled corpus and keeps it only when its digest is that one
    (or, for a champion recorded before digests, when its label set is the champion's); anything else would
    stand in for the champion's data. A stored reference whose label set differs from what the champion answers
    is refused unless `data replace --new-label-set` stored it while this champion served (a candidate scored
    on another label set's frozen set beats a champion that cannot answer it; a rollback to a champion of the
    old set asks again)."""
    served = served_labels(champion)
    stored = sync(settings)
    if stored is None:
        frame, source = from_settings(settings)
        recorded = (champion.params or {}).get("reference_digest")
        digest, labels = digest_frame(frame), sorted(frame["label"].unique().tolist())
        if (recorded is not None and digest != recorded) or (served and labels != served):
            raise ConfigError(f"this home has no reference dataset ({folder(settings) / META_FILE} is missing), "
                              f"none is published beside the models ({_shared_uri(settings)}), and the configured "
                              f"data, {source} (digest {digest[:12]}, labels {labels}), is not what the champion "
                              f"{champion.version} was trained on"
                              f"{f' (digest {str(recorded)[:12]})' if recorded else f' (labels {served})'}: run "
                              "`refitd data publish` with the home that ran `refitd init`, configure the same "
                              "training.data, or store the data with `refitd data replace FILE`")
        store(settings, frame, source=source, actor="refitd", publish=False,  # this host's split of the same rows
              reason=f"{FIRST_USE_HERE}: the data {champion.version} was trained on")
        return
    if served and served != sorted(stored.labels) and stored.new_label_set_for != champion.version:
        raise ConfigError(f"the reference dataset ({stored.source}) has labels {sorted(stored.labels)} but the champion "
                          f"{champion.version} answers {served}; `refitd data replace FILE --new-label-set` stores data "
                          "with a new label set on purpose")


def check_same(settings: Settings, frame: pd.DataFrame, source: str) -> None:
    """Refuse to start from other data than the stored (or published) reference without an explicit replace."""
    stored = sync(settings)
    if stored is not None and stored.digest != digest_frame(frame):
        raise ConfigError(f"a reference dataset is already stored ({stored.source}, {stored.rows} rows, digest "
                          f"{stored.digest[:12]}); {source} differs: `refitd data replace {source}` replaces it")


def _atomic_write(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

