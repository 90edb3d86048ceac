"""Exactly which rows a training run uses: the reference data, new production labels, replay.

The frozen test set is the reference data's ``test`` split, and any production
text that hashes into that split (or is one of its rows) is kept out of training
too, so no refit ever trains on a frozen test row. Every other text has one label,
its newest (:func:`refitd.core.datasets.dedupe`): later feedback over earlier, and
feedback over the reference data, which is older than any of it; so no text is in
two parts of a snapshot. New production labels (since the champion was trained)
are split by a salted hash of the text into recent-test / validation / train — a text
labelled only by sources that do not measure (``serving.feedback_measure_sources``:
corrections sent because an answer looked wrong) into train only, since the recent test
set and validation measure the models; so does a text of the reference's training split
that comes back as feedback, which every model learned. Older rows are replayed beside
them so the model does not forget. Feedback whose label is outside the
model's label set is left out (counted in ``unknown_labels``): a new class needs new reference
data (``refitd data replace``), not a refit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from refitd.core.datasets import dedupe, digest_frame, hashed_part, normalise, split_of, stratified_sample
from refitd.core.errors import DataError

log = logging.getLogger(__name__)

RECENT_SALT = "refitd-recent-v1"
NEW_VALIDATION_FRACTION = 0.1


@dataclass
class Snapshot:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame  # the frozen test set
    recent_test: pd.DataFrame
    labels: list[str]
    digest: str = ""
    frozen_digest: str = ""
    counts: dict[str, Any] = field(default_factory=dict)
    unknown_labels: dict[str, int] = field(default_factory=dict)  # feedback rows left out, per label outside ``labels``
    labels_until: datetime | None = None  # the newest production label read (``since`` when none was)
    reference_digest: str | None = None  # the reference rows it read (core/reference.py), set by the caller

    def seal(self) -> Snapshot:
        self.digest = digest_frame(pd.concat([self.train[["text", "label"]], self.validation[["text", "label"]]]))
        self.frozen_digest = digest_frame(self.test)
        self.counts = {
            name: {
                "rows": int(len(part)),
                "labels": {k: int(v) for k, v in part["label"].value_counts().items()},
                "sources": {k: int(v) for k, v in part["source"].value_counts().items()} if "source" in part else {},
            }
            for name, part in (("train", self.train), ("validation", self.validation), ("test", self.test),
                               ("recent_test", self.recent_test))
        }
        return self


def _recent_split(text: str, recent_fraction: float) -> str:
    return hashed_part(text, salt=RECENT_SALT,
                       shares=[("recent_test", recent_fraction), ("validation", NEW_VALIDATION_FRACTION)])


def build(
    reference: pd.DataFrame,
    production: pd.DataFrame,
    *,
    since: datetime | None,
    validation_fraction: float,
    test_fraction: float,
    recent_fraction: float,
    replay_ratio: float,
    max_train_rows: int | None,
    max_test_rows: int | None,
    seed: int,
    min_reference_share: float = 0.0,
    measuring: list[str] | None = None,
) -> Snapshot:
    """The training snapshot. ``reference`` has a ``split`` column; ``production`` has text, label, created_at and,
    with ``measuring`` (the sources whose labels may measure; None for all), source."""
    labels = sorted(reference["label"].unique().tolist())
    # Sort first: the same rows in any order make the same snapshot (and the same digest).
    ref = reference.sort_values("text", kind="stable").reset_index(drop=True).assign(source="reference")
    production = production.sort_values(["created_at", "text"], kind="stable") if len(production) else production
    columns = ["text", "label", "created_at", "source", "measures", "corrected_at"]
    prod = production.assign(source="feedback", measures=True if measuring is None else
                             production["source"].isin(measuring),
                             corrected_at=production.get("corrected_at"))[columns] if len(production) else \
        pd.DataFrame(columns=columns)
    # A label the model has no output for cannot be trained on: left out (and counted, and named in the refit's
    # reason), not a failure of every refit until someone edits the feedback table.
    unknown = prod.loc[~prod["label"].isin(labels), "label"].value_counts()
    prod = prod.loc[prod["label"].isin(labels)]
    if len(unknown):
        log.warning("left out %d feedback rows whose labels are outside the label set %s: %s",
                    int(unknown.sum()), labels, unknown.to_dict())
    prod = _measured_texts(prod, since) if measuring is not None else prod
    frozen_texts = set(ref.loc[ref["split"] == "test", "text"].map(normalise))
    frozen = prod["text"].map(lambda t: normalise(t) in frozen_texts or split_of(
        t, validation_fraction=validation_fraction, test_fraction=test_fraction) == "test")
    prod = dedupe(prod.loc[~frozen.astype(bool)], newest_by="created_at").reset_index(drop=True)
    trained_texts = set(ref.loc[ref["split"] == "train", "text"].map(normalise))  # every model so far learned these
    prod["measures"] = prod["measures"].astype(bool) & ~prod["text"].map(normalise).isin(trained_texts)
    ref = ref.loc[~ref["text"].map(normalise).isin(set(prod["text"].map(normalise)))]  # its feedback is newer
    is_new = (prod["created_at"] > since) if since is not None else pd.Series(True, index=prod.index)
    is_new = is_new.astype(bool)
    new, old = prod.loc[is_new].copy(), prod.loc[~is_new].copy()
    new["source"], old["source"] = "feedback_new", "feedback_old"
    for part in (new, old):
        part["part"] = part["text"].map(lambda t: _recent_split(t, recent_fraction))
        part.loc[~part["measures"].astype(bool), "part"] = "train"  # a correction trains; it measures nothing

    new_train = new[new["part"] == "train"]
    train = _training_mix(ref[ref["split"] == "train"], old[old["part"] == "train"], new_train,
                          replay_ratio=replay_ratio, max_train_rows=max_train_rows,
                          min_reference_share=min_reference_share, seed=seed)
    val_cap = None if max_train_rows is None else max(200, max_train_rows // 3)
    validation = pd.concat([stratified_sample(ref[ref["split"] == "validation"], val_cap, seed=seed),
                            new[new["part"] == "validation"], old[old["part"] == "validation"]], ignore_index=True)
    test = stratified_sample(ref[ref["split"] == "test"], max_test_rows, seed=seed)
    recent = new[new["part"] == "recent_test"].reset_index(drop=True)
    cols = ["text", "label", "source"]
    newest = production["created_at"].max() if len(production) else None
    return Snapshot(train[cols], validation[cols], test[cols], recent[cols], labels,
                    unknown_labels={str(k): int(v) for k, v in unknown.items()},
                    labels_until=since if newest is None else pd.Timestamp(newest).to_pydatetime()).seal()


def _measured_texts(prod: pd.DataFrame, since: datetime | None) -> pd.DataFrame:
    """Decide per text, before the newest label of each is kept, whether it may measure: when any of its labels
    came from a measuring source (picked without looking at the answer; a later correction gives the truth, not
    the choice) and no correction of it is older than ``since`` — a row from another source, or one whose
    ``corrected_at`` (its prediction's first correction, kept when an audit relabelled it) is that old — since
    such a correction went to train, the champion may have learned the text, and it must not test it now."""
    if not len(prod):
        return prod
    key, measured = prod["text"].map(normalise), prod["measures"].astype(bool)
    taught = ~measured & (prod["created_at"] <= since if since is not None else False)
    if since is not None:  # a correction an audit's label replaced since: its row keeps when it came
        corrected = pd.to_datetime(prod["corrected_at"], utc=True)
        taught |= (corrected <= since).fillna(False).astype(bool)
    return prod.assign(measures=measured.groupby(key).transform("any") & ~taught.groupby(key).transform("any"))


def _training_mix(reference: pd.DataFrame, old: pd.DataFrame, new: pd.DataFrame, *, replay_ratio: float,
                  max_train_rows: int | None, min_reference_share: float, seed: int) -> pd.DataFrame:
    """New labelled rows plus replayed older rows (reference and earlier feedback), at most
    ``max_train_rows``, with reference rows at least ``min_reference_share`` of the result whatever
    the number of new labels: client labels never own the training mix."""
    share = min_reference_share
    others_cap = None if max_train_rows is None else max(1, int(max_train_rows * (1 - share)))
    pool = len(reference) + len(old)
    new = stratified_sample(new, others_cap, seed=seed).head(others_cap) if len(new) else new
    replay = int(round(replay_ratio * len(new))) if len(new) else (max_train_rows or pool)
    if max_train_rows is not None:
        replay = max(0, min(replay, max_train_rows - len(new)))
    old_n = min(len(old), int(round(replay * len(old) / max(1, pool))))
    if others_cap is not None:
        old_n = max(0, min(old_n, others_cap - len(new)))

    def floor(others: int) -> int:  # reference rows needed beside ``others`` rows to make up ``share``
        return math.ceil(share / (1 - share) * others - 1e-9) if share else 0

    ref_n = min(len(reference), max(replay - old_n, floor(len(new) + old_n)))
    if ref_n < floor(len(new) + old_n):  # too few reference rows: take fewer new and old rows instead
        room = int(ref_n * (1 - share) / share + 1e-9)
        old_n = min(old_n, room // 2)
        new = stratified_sample(new, max(0, room - old_n), seed=seed).head(max(0, room - old_n))
    parts = [reference.sample(n=ref_n, random_state=seed), old.sample(n=old_n, random_state=seed), new]
    return pd.concat(parts, ignore_index=True).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def validate(snap: Snapshot, *, min_rows: int, min_class_share: float) -> None:
    """Raise DataError with a reason a human can act on, or return quietly."""
    train = snap.train
    if len(train) < min_rows:
        raise DataError(f"only {len(train)} training rows; need at least {min_rows} (training.min_rows)")
    empty = train["text"].fillna("").str.strip() == ""
    if empty.any():
        raise DataError(f"{int(empty.sum())} training rows have empty text")
    dup = train["text"].map(normalise).duplicated()
    if dup.any():
        raise DataError(f"{int(dup.sum())} training texts are duplicated")
    for name, part in (("train", train), ("validation", snap.validation), ("recent test", snap.recent_test)):
        unknown = sorted(set(part["label"]) - set(snap.labels))
        if unknown:
            raise DataError(f"{name} rows carry labels outside the label set {snap.labels}: {unknown}; "
                            "fix the feedback or retrain from data that has them")
    if len(snap.labels) < 2:
        raise DataError(f"the reference data has one label ({snap.labels[0] if snap.labels else 'none'}): a classifier "
                        "needs at least two; replace it with data that has them (`refitd data replace FILE`)")
    shares = train["label"].value_counts(normalize=True)
    for label in snap.labels:
        share = float(shares.get(label, 0.0))
        if share < min_class_share:
            raise DataError(f"label {label!r} is {share:.1%} of training rows; need ≥ {min_class_share:.1%} "
                            "(training.min_class_share): collect more labels for it")
    if len(snap.validation) < 20:
        raise DataError(f"only {len(snap.validation)} validation rows; early stopping needs at least 20")
