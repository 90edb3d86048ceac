"""The reference dataset: the labelled data every refit starts from, kept as state in the home.

The first use (``refitd init``, with ``--data FILE`` or the bundled corpus) stores a snapshot in
``<home>/data/reference-<digest>.parquet`` — text, label and the frozen split of every row — with
``reference.json`` beside it: where it came from, its digest, rows per label and split sizes.
Refits and drift references read that snapshot, never the configured path again, so a file that
changes on disk after init changes nothing, and the frozen test set stays the same set from
version to version. Replacing it is explicit (``refitd data replace FILE``) and recorded as an event.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd

from refitd.core.datasets import digest_frame, load_configured
from refitd.core.errors import ConfigError
from refitd.core.reference_info import META_FILE, ReferenceInfo, folder, info
from refitd.core.registry import served_labels
from refitd.core.settings import Settings
from refitd.core.tables import ModelVersion, utcnow

COLUMNS = ["text", "label", "split"]


def from_settings(settings: Settings) -> tuple[pd.DataFrame, str]:
    """Read what the settings name (``training.data``, else the bundled corpus's ``training.topics``)."""
    t = settings.training
    frame = load_configured(data=t.data, text_column=t.text_column, label_column=t.label_column, topics=t.topics,
                            validation_fraction=t.validation_fraction, test_fraction=t.test_fraction)
    frame = frame[frame["split"] != "stream"]  # the bundled corpus's production-traffic share is not reference
    source = str(t.data) if t.data is not None else f"bundled corpus (topics {', '.join(t.topics) or 'all'})"
    return frame[COLUMNS].reset_index(drop=True), source


def store(settings: Settings, frame: pd.DataFrame, *, source: str, actor: str, reason: str,
          new_label_set_for: str | None = None) -> ReferenceInfo:
    """Write the rows under a name of their own digest, then the description that points at them: its
    atomic replace is the one switch, so a reader sees the old set or the new one, never a mix."""
    out = folder(settings)
    out.mkdir(parents=True, exist_ok=True)
    frame = frame[COLUMNS].reset_index(drop=True)
    digest = digest_frame(frame)
    meta = ReferenceInfo(source=source, file=f"reference-{digest[:16]}.parquet", digest=digest, rows=len(frame),
                         labels={str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()},
                         splits={str(k): int(v) for k, v in frame["split"].value_counts().sort_index().items()},
                         stored_at=utcnow(), actor=actor, reason=reason, new_label_set_for=new_label_set_for)
    previous = info(settings)
    _atomic_write(out / meta.file, lambda p: frame.to_parquet(p, index=False))
    _atomic_write(out / META_FILE, lambda p: p.write_text(meta.model_dump_json(indent=2)))
    if previous is not None and previous.file != meta.file:
        (out / previous.file).unlink(missing_ok=True)
    return meta


def load(settings: Settings) -> pd.DataFrame:
    """The stored reference rows (text, label, split); stored from the settings on first use."""
    stored = info(settings)
    if stored is None:
        frame, source = from_settings(settings)
        store(settings, frame, source=source, actor="refitd", reason="first use")
        return frame
    path = folder(settings) / stored.file
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the reference dataset {path}: {exc}; restore it or run "
                          "`refitd data replace FILE`") from None
    if digest_frame(frame) != stored.digest:
        raise ConfigError(f"{path} does not match its digest in {META_FILE} ({stored.digest[:12]}); restore it or "
                          "run `refitd data replace FILE`")
    return frame


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
    stored = info(settings)
    if stored is None:
        frame, source = from_settings(settings)
        recorded = (champion.params or {}).get("reference_digest")
        digest, labels = digest_frame(frame), sorted(frame["label"].unique().tolist())
        if (recorded is not None and digest != recorded) or (served and labels != served):
            raise ConfigError(f"this home has no reference dataset ({folder(settings) / META_FILE} is missing) and "
                              f"the configured data, {source} (digest {digest[:12]}, labels {labels}), is not what "
                              f"the champion {champion.version} was trained on"
                              f"{f' (digest {str(recorded)[:12]})' if recorded else f' (labels {served})'}: run it with "
                              "the home that ran `refitd init` (REFITD_HOME), restore that folder, configure the same "
                              "training.data, or store the data with `refitd data replace FILE`")
        store(settings, frame, source=source, actor="refitd",
              reason=f"first use on this host: the data {champion.version} was trained on")
        return
    if served and served != sorted(stored.labels) and stored.new_label_set_for != champion.version:
        raise ConfigError(f"the reference dataset ({stored.source}) has labels {sorted(stored.labels)} but the champion "
                          f"{champion.version} answers {served}; `refitd data replace FILE --new-label-set` stores data "
                          "with a new label set on purpose")


def check_same(settings: Settings, frame: pd.DataFrame, source: str) -> None:
    """Refuse to start from other data than the stored reference without an explicit replace."""
    stored = info(settings)
    if stored is not None and stored.digest != digest_frame(frame):
        raise ConfigError(f"this home already has a reference dataset ({stored.source}, {stored.rows} rows, digest "
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

