"""Training snapshots: frozen test rows never train; new labels split; replay; validation reasons."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from refitd.core.datasets import assign_splits, split_of
from refitd.core.errors import DataError
from refitd.flows import snapshot as snap

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
KW = dict(validation_fraction=0.1, test_fraction=0.15, recent_fraction=0.2, replay_ratio=1.0,
          max_train_rows=None, max_test_rows=None, seed=0)


def _reference(n: int = 1200) -> pd.DataFrame:
    labels = ["negative", "neutral", "positive"]
    frame = pd.DataFrame({"text": [f"reference tweet {i}" for i in range(n)], "label": [labels[i % 3] for i in range(n)]})
    return assign_splits(frame, validation_fraction=0.1, test_fraction=0.15)


def _production(n: int, start: datetime, prefix: str = "prod") -> pd.DataFrame:
    labels = ["negative", "neutral", "positive"]
    return pd.DataFrame({"text": [f"{prefix} text {i}" for i in range(n)], "label": [labels[i % 3] for i in range(n)],
                         "created_at": [start + timedelta(seconds=i) for i in range(n)]})


def test_frozen_test_rows_never_train_even_when_fed_back() -> None:
    ref = _reference()
    frozen = ref[ref["split"] == "test"]
    echoed = frozen.head(50)[["text", "label"]].assign(created_at=T0 + timedelta(days=2))  # came back as feedback
    prod = pd.concat([_production(400, T0 + timedelta(days=1)), echoed], ignore_index=True)
    s = snap.build(ref, prod, since=T0, **KW)
    trained = set(s.train["text"]) | set(s.validation["text"])
    assert not trained & set(frozen["text"])
    assert all(split_of(t, validation_fraction=0.1, test_fraction=0.15) != "test" for t in s.train["text"])
    assert set(s.test["text"]) == set(frozen["text"])


def test_a_frozen_row_fed_back_never_trains_whatever_its_hash() -> None:
    ref = _reference()
    moved = ref.index[ref["split"] == "train"][:30]
    ref.loc[moved, "split"] = "test"  # a reference split by another rule: its test rows still stay out
    echoed = ref.loc[moved, ["text", "label"]].assign(created_at=T0 + timedelta(days=1))
    s = snap.build(ref, echoed, since=T0, **KW)
    assert not (set(s.train["text"]) | set(s.validation["text"]) | set(s.recent_test["text"])) & set(echoed["text"])


def test_each_text_has_its_newest_label_and_one_place() -> None:
    """Feedback relabels reference texts (train and validation split) and itself; the newest label wins."""
    ref = _reference()
    labels = ["negative", "neutral", "positive"]
    relabelled = ref[ref["split"].isin(["train", "validation"])].groupby("split").head(60)
    flipped = relabelled["label"].map(lambda lbl: labels[(labels.index(lbl) + 1) % 3])
    first = pd.DataFrame({"text": relabelled["text"].str.upper(), "label": flipped, "created_at": T0 + timedelta(days=1)})
    second = first.iloc[::2].assign(label=relabelled["label"].iloc[::2].to_numpy(), created_at=T0 + timedelta(days=2))
    tie = pd.DataFrame({"text": ["undecided", "undecided"], "label": ["negative", "positive"],
                        "created_at": T0 + timedelta(days=1)})
    prod = pd.concat([second, first, tie], ignore_index=True)  # newest first: the order rows arrive in is no guide
    s = snap.build(ref, prod, since=T0, **KW)
    placed = pd.concat([s.train, s.validation, s.recent_test], ignore_index=True)
    placed = placed.assign(key=placed["text"].str.lower()).set_index("key")
    assert not placed.index.duplicated().any()  # no text is in two parts, nor twice in one
    newest = pd.concat([first, second]).assign(key=lambda f: f["text"].str.lower()).groupby("key")["label"].last()
    fed_back = placed.loc[newest.index]
    assert (fed_back["label"] == newest).all() and set(fed_back["source"]) == {"feedback_new"}
    assert "undecided" not in placed.index  # two labels at once: nobody knows which is right


def test_new_labels_split_and_replay_ratio() -> None:
    ref = _reference()
    prod = pd.concat([_production(100, T0 - timedelta(days=1), "old"), _production(500, T0 + timedelta(hours=1), "new")])
    s = snap.build(ref, prod, since=T0, **KW)
    new_train = (s.train["source"] == "feedback_new").sum()
    replayed = s.train["source"].isin(["reference", "feedback_old"]).sum()
    assert abs(replayed - new_train) <= 3  # replay_ratio 1.0
    assert len(s.recent_test) and set(s.recent_test["source"]) == {"feedback_new"}
    assert not set(s.recent_test["text"]) & set(s.train["text"])
    assert not s.recent_test["text"].str.startswith("old").any()
    assert s.counts["train"]["sources"]["feedback_new"] == new_train
    again = snap.build(ref, prod.sample(frac=1.0, random_state=3), since=T0, **KW)
    assert again.digest == s.digest  # the digest names the rows, not their order


def test_a_snapshot_records_the_newest_label_it_read_so_the_next_one_starts_there() -> None:
    from refitd.core import registry
    from refitd.core.tables import ModelVersion

    ref = _reference()
    prod = pd.concat([_production(100, T0 - timedelta(days=1), "old"), _production(50, T0 + timedelta(hours=1), "new")])
    s = snap.build(ref, prod, since=T0, **KW)
    assert s.labels_until == T0 + timedelta(hours=1, seconds=49)  # the newest label read, whether new or old
    assert snap.build(ref, _production(0, T0), since=T0, **KW).labels_until == T0  # none read: where it started
    # the version trained on it counts labels as new from there, not from when it was registered (after training,
    # by when labels that came in meanwhile were in no snapshot)
    registered = T0 + timedelta(hours=3)
    mv = ModelVersion(version="v2", created_at=registered, params={"labels_until": s.labels_until.isoformat()})
    assert registry.labels_until(mv) == s.labels_until
    assert registry.labels_until(ModelVersion(version="v1", created_at=registered, params={})) == registered
    naive = ModelVersion(version="v3", created_at=registered.replace(tzinfo=None), params=mv.params)
    assert registry.labels_until(naive) == s.labels_until.replace(tzinfo=None)  # as the store returns created_at
    later = pd.concat([prod, _production(20, T0 + timedelta(hours=2), "meanwhile")])

    def new_texts(snapshot: snap.Snapshot) -> set[str]:
        parts = pd.concat([snapshot.train, snapshot.validation, snapshot.recent_test])
        return set(parts.loc[parts["source"] == "feedback_new", "text"])

    assert {t.split(" text")[0] for t in new_texts(snap.build(ref, later, since=registry.labels_until(mv), **KW))} \
        == {"meanwhile"}  # the labels that came in while it trained are new to it, and only they
    assert not new_texts(snap.build(ref, later, since=registered, **KW))  # counted from registration: none


def test_without_new_labels_trains_on_reference() -> None:
    s = snap.build(_reference(), _production(0, T0), since=T0, **KW)
    assert set(s.train["source"]) == {"reference"} and s.recent_test.empty


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: s.train.head(10), "only 10 training rows; need at least 100"),
        (lambda s: s.train[s.train["label"] != "positive"], "label 'positive' is 0.0% of training rows"),
        (lambda s: pd.concat([s.train, s.train.head(5)]), "5 training texts are duplicated"),
        (lambda s: s.train.assign(label=["angry"] + list(s.train["label"][1:])), "labels outside the label set"),
        (lambda s: s.train.assign(text=[" "] + list(s.train["text"][1:])), "1 training rows have empty text"),
    ],
)
def test_validation_reasons(mutate, match) -> None:
    s = snap.build(_reference(), _production(0, T0), since=None, **KW)
    s.train = mutate(s)
    with pytest.raises(DataError, match=match):
        snap.validate(s, min_rows=100, min_class_share=0.05)


def test_a_reference_with_one_label_is_refused_before_training() -> None:
    one = _reference().assign(label="positive")
    s = snap.build(one, _production(0, T0), since=None, **KW)
    with pytest.raises(DataError, match="one label \\(positive\\): a classifier needs at least two"):
        snap.validate(s, min_rows=100, min_class_share=0.05)


@pytest.mark.parametrize(("new_rows", "replay_ratio", "cap"), [(3000, 0.0, None), (3000, 1.0, 1000), (60, 0.0, None),
                                                                (5000, 0.2, 2000)])
def test_reference_rows_are_at_least_the_floor_of_every_training_mix(new_rows, replay_ratio, cap) -> None:
    ref = _reference(900)  # a small reference: ~680 training rows against thousands of new labels
    kw = KW | {"replay_ratio": replay_ratio, "max_train_rows": cap}
    s = snap.build(ref, _production(new_rows, T0 + timedelta(days=1)), since=T0, min_reference_share=0.3, **kw)
    sources = s.train["source"].value_counts()
    share = sources.get("reference", 0) / len(s.train)
    assert share >= 0.3 - 1e-9, sources.to_dict()
    assert sources.get("feedback_new", 0) > 0
    if cap is not None:
        assert len(s.train) <= cap + 3  # stratified rounding: at most one row per label
    without = snap.build(ref, _production(new_rows, T0 + timedelta(days=1)), since=T0, min_reference_share=0.0, **kw)
    if replay_ratio == 0.0:  # no floor and no replay: the client's labels own the mix, which the floor prevents
        assert without.train["source"].value_counts().get("reference", 0) == 0


def test_the_frozen_set_has_a_digest_that_follows_its_rows() -> None:
    ref = _reference()
    a = snap.build(ref, _production(100, T0), since=None, **KW)
    b = snap.build(ref.sample(frac=1.0, random_state=3), _production(100, T0), since=None, **KW)
    assert a.frozen_digest and a.frozen_digest == b.frozen_digest  # row order does not matter
    relabelled = ref.copy()
    first_test = relabelled.index[relabelled["split"] == "test"][0]
    relabelled.loc[first_test, "label"] = "positive" if relabelled.loc[first_test, "label"] != "positive" else "neutral"
    assert snap.build(relabelled, _production(100, T0), since=None, **KW).frozen_digest != a.frozen_digest


def test_a_frozen_set_other_than_the_champions_record_is_named_never_silent() -> None:
    from refitd.core.tables import ModelVersion
    from refitd.flows.refit import frozen_set_note

    s = snap.build(_reference(), _production(100, T0), since=None, **KW)
    same = ModelVersion(version="v3", metrics={"frozen_set": {"digest": s.frozen_digest, "n": len(s.test)}})
    assert frozen_set_note(same, s) == f"; same frozen set as v3 ({s.frozen_digest[:12]}, n={len(s.test)})"
    other = ModelVersion(version="v3", metrics={"frozen_set": {"digest": "ab" * 32, "n": 2250}})
    note = frozen_set_note(other, s)
    assert "differs" in note and "abababababab (n=2250)" in note and s.frozen_digest[:12] in note
    assert "re-scored" in note
    unrecorded = frozen_set_note(ModelVersion(version="v1", metrics={}), s)
    assert "not recorded" in unrecorded and s.frozen_digest[:12] in unrecorded
    assert frozen_set_note(None, s) == ""


@pytest.mark.parametrize(("old_rows", "new_rows", "cap"), [(9000, 0, 1000), (9000, 700, 1000), (9000, 0, None)])
def test_the_floor_holds_with_old_feedback_and_never_breaks_the_cap(old_rows, new_rows, cap) -> None:
    ref = _reference(1300)  # ~1,000 reference training rows
    prod = pd.concat([_production(old_rows, T0, prefix="old"), _production(new_rows, T0 + timedelta(days=3))],
                     ignore_index=True)
    s = snap.build(ref, prod, since=T0 + timedelta(days=2), min_reference_share=0.3,
                   **(KW | {"max_train_rows": cap}))
    sources = s.train["source"].value_counts()
    assert sources.get("reference", 0) / len(s.train) >= 0.3 - 1e-9, sources.to_dict()
    if cap is not None:
        assert len(s.train) <= cap + 1, len(s.train)
    assert sources.get("feedback_old", 0) > 0 and (new_rows == 0 or sources.get("feedback_new", 0) > 0)
    assert not s.train["text"].duplicated().any()


def test_feedback_with_a_label_outside_the_label_set_is_left_out_and_counted() -> None:
    """An imported 'Positive' (for 'positive') or a new class: left out and counted, not a failure of every refit."""
    prod = _production(300, T0 + timedelta(days=1))
    odd = pd.DataFrame({"text": [f"odd {i}" for i in range(12)], "label": ["Positive"] * 9 + ["furious"] * 3,
                        "created_at": T0 + timedelta(days=1)})
    s = snap.build(_reference(), pd.concat([prod, odd], ignore_index=True), since=T0, **KW)
    snap.validate(s, min_rows=50, min_class_share=0.05)
    assert s.unknown_labels == {"Positive": 9, "furious": 3}
    assert set(s.counts) == {"train", "validation", "test", "recent_test"}  # the parts' counts keep their shape
    kept = set(s.train["text"]) | set(s.validation["text"]) | set(s.recent_test["text"])
    assert not kept & set(odd["text"]) and set(s.train["label"]) | set(s.recent_test["label"]) <= set(s.labels)


def test_corrections_train_and_never_measure() -> None:
    """With ``serving.feedback_measure_sources``, labels of another source (corrections of wrong answers) all go to
    train, so the recent test set and validation that measure the models hold only labels that may measure."""
    prod = pd.concat([_production(400, T0 + timedelta(days=1), "audit").assign(source="review"),
                      _production(400, T0 + timedelta(days=1), "fix").assign(source="api")], ignore_index=True)
    every = snap.build(_reference(), prod, since=T0, **KW)
    assert any(t.startswith("fix") for t in every.recent_test["text"])  # without the setting: split alike
    s = snap.build(_reference(), prod, since=T0, **KW, measuring=["review"])
    assert not any(t.startswith("fix") for t in pd.concat([s.recent_test["text"], s.validation["text"]]))
    trainable = {t for i in range(400) if split_of(t := f"fix text {i}", validation_fraction=0.1,
                                                    test_fraction=0.15) != "test"}  # the frozen set's hash keeps some
    assert {t for t in s.train["text"] if t.startswith("fix")} == trainable
    audited = {t for t in every.recent_test["text"] if t.startswith("audit")}
    assert set(s.recent_test["text"]) == audited and audited  # the audit's labels split as before


def test_an_audited_text_corrected_later_still_measures_and_a_trained_correction_never_does() -> None:
    """Per text: audited, then corrected, it measures (the audit picked it; the correction is its truth); corrected
    before the champion's refit (so it went to train), then audited, it trains only — the champion may know it."""
    audit = _production(400, T0 + timedelta(days=1), "t").assign(source="review")
    corrected = audit.assign(label="positive", source="api", created_at=audit["created_at"] + timedelta(days=1))
    s = snap.build(_reference(), pd.concat([audit, corrected], ignore_index=True), since=T0, **KW, measuring=["review"])
    plain = snap.build(_reference(), audit, since=T0, **KW, measuring=["review"])
    assert set(s.recent_test["text"]) == set(plain.recent_test["text"]) and len(s.recent_test)
    assert (s.recent_test["label"] == "positive").all()  # the newest label is the truth
    trained_first = audit.assign(source="api", created_at=T0 - timedelta(days=1))  # a correction the champion read
    late_audit = audit.assign(created_at=T0 + timedelta(days=2))
    t = snap.build(_reference(), pd.concat([trained_first, late_audit], ignore_index=True), since=T0, **KW,
                   measuring=["review"])
    assert len(t.recent_test) == 0 and not set(t.validation["text"]) & set(audit["text"])


def test_a_reference_training_text_fed_back_trains_and_never_tests() -> None:
    """Every model so far trained on the reference's training split: such a text coming back as feedback (with its
    label, or another) goes to train, never to the recent test set or validation that measure the models."""
    ref = _reference()
    trained = ref[ref["split"] == "train"].head(300)
    echoed = trained[["text"]].assign(label="positive", created_at=T0 + timedelta(days=1))
    s = snap.build(ref, pd.concat([echoed, _production(300, T0 + timedelta(days=1))], ignore_index=True), since=T0,
                   **KW)
    measured = set(s.recent_test["text"]) | set(s.validation["text"])
    assert not measured & set(trained["text"]) and measured & {f"prod text {i}" for i in range(300)}
    assert set(trained["text"]) <= set(s.train["text"])  # as the feedback, with its newest label
