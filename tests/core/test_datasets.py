"""Data loading: clear errors naming file, row and column; deterministic disjoint splits."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from refitd.core.datasets import (
    assign_splits,
    dedupe,
    load_bundled_corpus,
    load_configured,
    load_table,
    normalise,
    repair_text,
    split_of,
    topic_of,
)
from refitd.core.errors import DataError


def _csv(tmp_path, rows, header="text,label"):
    path = tmp_path / "data.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_jsonl_parquet_round_trip(tmp_path) -> None:
    frame = pd.DataFrame({"body": ["good", "bad", "meh"], "y": ["pos", "neg", "neu"]})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    for name in ("d.csv", "d.parquet", "d.jsonl"):
        out = load_table(tmp_path / name, text_column="body", label_column="y")
        assert sorted(out["label"]) == ["neg", "neu", "pos"]


@pytest.mark.parametrize(
    ("rows", "kwargs", "match"),
    [
        (["hello,pos", " ,neg"], {}, r"data.csv, row 3, column 'text': empty text"),
        (["hello,pos", "bye,"], {}, r"row 3, column 'label': empty label"),
        (["hello,pos", "bye,angry"], {"labels": ["pos", "neg"]}, r"row 3, column 'label': unknown label 'angry'"),
        (["hello,pos"], {"text_column": "body"}, r"column 'body': missing column \(found: text, label\)"),
    ],
)
def test_bad_csv_names_row_and_column(tmp_path, rows, kwargs, match) -> None:
    with pytest.raises(DataError, match=match):
        load_table(_csv(tmp_path, rows), **kwargs)


def test_a_label_the_store_cannot_keep_is_named_by_row(tmp_path) -> None:
    long = "x" * 65  # the store's and the API's label columns hold 64 characters: found at load, not at the first label
    with pytest.raises(DataError, match=r"row 3, column 'label': label longer than 64 characters"):
        load_table(_csv(tmp_path, ["hello,pos", f"bye,{long}"]))
    assert len(load_table(_csv(tmp_path, ["hello,pos", f"bye,{long[:64]}"]))) == 2


def test_jsonl_rows_are_its_lines_and_its_values_stay_as_written(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 2.0}\n{"text": 5, "label": 1}\n')
    with pytest.raises(DataError, match=r"row 4, column 'text': text is not a string \(int 5\)"):
        load_table(path)  # line 4 of the file, its blank line 2 counted
    path.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": 2.0}\n{"text": "  ", "label": 1}\n')
    with pytest.raises(DataError, match=r"row 4, column 'text': empty text"):
        load_table(path)
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 2}\n{"text": "c", "label": 2.5}\n')
    assert sorted(load_table(path)["label"]) == ["1", "2", "2.5"]  # not "1.0" and "2.0" beside a float


def test_bad_jsonl_line_named(tmp_path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match=r"d.jsonl, row 2: invalid JSON"):
        load_table(path)


@pytest.mark.parametrize(("name", "row"), [("latin1.csv", 3), ("latin1.jsonl", 2)])
def test_a_file_not_in_utf8_names_its_first_bad_line(tmp_path, name, row) -> None:
    path = tmp_path / name
    body = ("text,label\nfine,positive\ncaf\u00e9 au lait,neutral\n" if name.endswith(".csv") else
            '{"text": "fine", "label": "positive"}\n{"text": "caf\u00e9", "label": "neutral"}\n')
    path.write_bytes(body.encode("latin-1"))
    with pytest.raises(DataError, match=rf"{name}, row {row}: not UTF-8 \(byte 0xe9"):
        load_table(path)


@pytest.mark.parametrize("name", ["missing.csv", "garbage.parquet", "notes.txt"])
def test_unreadable_files(tmp_path, name) -> None:
    path = tmp_path / name
    if name != "missing.csv":
        path.write_bytes(b"\x00\x01 definitely not a table")
    with pytest.raises(DataError, match=name):
        load_table(path)


def test_splits_deterministic_and_disjoint() -> None:
    frame = pd.DataFrame({"text": [f"tweet number {i}" for i in range(3000)], "label": ["a"] * 3000})
    a = assign_splits(frame, validation_fraction=0.1, test_fraction=0.15, stream_fraction=0.3)
    b = assign_splits(frame.sample(frac=1.0, random_state=1), validation_fraction=0.1, test_fraction=0.15, stream_fraction=0.3)
    assert a.set_index("text")["split"].to_dict() == b.set_index("text")["split"].to_dict()
    shares = a["split"].value_counts(normalize=True)
    assert abs(shares["test"] - 0.15) < 0.03 and abs(shares["stream"] - 0.30) < 0.04
    # the split follows the text, whatever its case or spacing
    assert split_of("Tweet  number 7 ", validation_fraction=0.1, test_fraction=0.15, stream_fraction=0.3) == \
        a.loc[a["text"] == "tweet number 7", "split"].item()


def test_frozen_test_set_never_moves() -> None:
    """The split is part of every model's record: a change to the hash would move test rows into training."""
    tests = [i for i in range(200) if split_of(f"tweet number {i}", validation_fraction=0.1, test_fraction=0.15) == "test"]
    assert tests == [20, 32, 39, 41, 48, 63, 64, 74, 83, 95, 97, 99, 107, 122, 129, 130, 132, 134, 136, 150, 151,
                     156, 173]


def test_dedupe_newest_label_wins_and_disagreeing_ties_are_dropped() -> None:
    t = pd.Timestamp("2026-01-01", tz="UTC")
    frame = pd.DataFrame({
        "text": ["Relabelled", "relabelled ", "tie", "Tie", "repeated", "Repeated", "once"],
        "label": ["pos", "neg", "pos", "neg", "pos", "pos", "neu"],
        "created_at": [t, t + pd.Timedelta(hours=1), t, t, t, t, t],
    })
    newest = {"relabelled": "neg", "repeated": "pos", "once": "neu"}  # a later label corrects an earlier one
    for rows in (frame, frame.iloc[::-1]):  # by time, not by row order
        out = dedupe(rows, newest_by="created_at")
        assert dict(zip(out["text"].map(normalise), out["label"], strict=True)) == newest
    # With no time to go by, two labels for a text are a disagreement: neither is kept; a repeat is kept once.
    out = dedupe(frame.drop(columns="created_at"))
    assert out["text"].tolist() == ["repeated", "once"]


def test_bundled_corpus_topics_and_repair() -> None:
    corpus = load_bundled_corpus()
    assert len(corpus) > 35_000
    assert set(corpus["label"]) == {"negative", "neutral", "positive"}
    counts = corpus["topic"].value_counts()
    assert counts["airline"] > 14_000 and counts["apple"] > 3_000 and counts["self_driving"] > 4_000
    assert not corpus["text"].str.contains("Õ¢").any()
    assert repair_text("I donÕ¢_Î_¢t want either") == "I don't want either"
    assert topic_of("@united lost my bag") == "airline" and topic_of("new iPhone is out") == "apple"


def test_configured_bundled_subset_has_all_splits() -> None:
    frame = load_configured(data=None, text_column="text", label_column="label", topics=["airline"],
                            validation_fraction=0.1, test_fraction=0.15)
    assert set(frame["topic"]) == {"airline"}
    assert set(frame["split"]) == {"train", "validation", "test", "stream"}
    with pytest.raises(DataError, match="unknown topic"):
        load_configured(data=None, text_column="text", label_column="label", topics=["cooking"],
                        validation_fraction=0.1, test_fraction=0.15)
