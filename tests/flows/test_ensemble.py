"""Bagging (training.ensemble): the combined module, its ONNX export, the keep-or-not rule, and one real refit."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from refitd.core.artifacts import HF_DIR, METRICS_FILE, MODEL_FILE, OUTPUTS, ArtifactStore
from refitd.core.db import make_engine, upgrade
from refitd.core.encoding import encode, load_tokenizer
from refitd.core.errors import ConfigError
from refitd.core.settings import Settings
from refitd.flows import quantize
from refitd.flows.ensemble import MeanOfMembers, bootstrap, choose, fit_ensemble
from refitd.flows.export import check_parity, export_onnx
from refitd.flows.finetune import FitConfig, load_model
from refitd.flows.refit import base_model_path
from tests.flows.conftest import tiny_settings

LABELS = ["bad", "fine", "good", "unsure"]
TEXTS = ["the flight was late again", "great crew, thanks!", "ok", "lost my bag and nobody answers the phone at all"]


def _members(tmp_path, k: int = 2):
    source = base_model_path(Settings.load(home=tmp_path))
    members = []
    for seed in range(k):  # the same encoder, different random heads: different logits per member
        torch.manual_seed(seed)
        model, tokenizer = load_model(source, LABELS, dropout=None)
        members.append(model.eval())
    return members, tokenizer


def test_ensemble_averages_members_and_exports_one_graph_with_parity(tmp_path) -> None:
    members, tokenizer = _members(tmp_path)
    ensemble = MeanOfMembers(members, warm_start=1).eval()
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    with torch.no_grad():
        each = [m(input_ids=ids, attention_mask=mask, output_hidden_states=True) for m in members]
        out = ensemble(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert not torch.allclose(each[0].logits, each[1].logits)
    torch.testing.assert_close(out.logits, (each[0].logits + each[1].logits) / 2)

    path = export_onnx(ensemble, tokenizer, tmp_path / MODEL_FILE)
    tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    assert check_parity(ensemble, path, tmp_path / "tokenizer.json", TEXTS, max_length=32) < 1e-3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert tuple(o.name for o in session.get_outputs()) == OUTPUTS
    feeds = encode(load_tokenizer(tmp_path / "tokenizer.json", max_length=32), TEXTS)
    logits, embedding = session.run(list(OUTPUTS), feeds)
    hidden = members[0].config.hidden_size
    assert logits.shape == (len(TEXTS), len(LABELS)) and embedding.shape == (len(TEXTS), hidden)
    # the embedding output is the mean of the members' mean-pooled embeddings
    m = torch.from_numpy(feeds["attention_mask"]).unsqueeze(-1).float()
    with torch.no_grad():
        pooled = [(o.hidden_states[-1] * m).sum(1) / m.sum(1) for o in
                  (mb(input_ids=torch.from_numpy(feeds["input_ids"]), attention_mask=torch.from_numpy(feeds["attention_mask"]),
                      output_hidden_states=True) for mb in members)]
    np.testing.assert_allclose(embedding, ((pooled[0] + pooled[1]) / 2).numpy(), atol=1e-4)

    # every INT8 recipe builds from the ensemble graph and keeps its outputs
    calibration = quantize.feeds(tmp_path / "tokenizer.json", TEXTS, max_length=32, batch_size=4)
    for name, recipe in quantize.RECIPES.items():
        built = quantize.build(recipe, path, tmp_path / f"model.{name}.onnx", calibration)
        q_logits, q_emb = ort.InferenceSession(str(built), providers=["CPUExecutionProvider"]).run(list(OUTPUTS), feeds)
        assert q_logits.shape == logits.shape and q_emb.shape == embedding.shape, name

    ensemble.save_pretrained(tmp_path / HF_DIR)  # the warm-start member's checkpoint, a plain classifier
    reloaded, _ = load_model(tmp_path / HF_DIR, LABELS, dropout=None)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=ids, attention_mask=mask).logits, each[1].logits)


def test_min_delta_keeps_the_ensemble_only_when_it_gains_enough() -> None:
    small = choose(0.702, [0.690, 0.700, 0.650], min_delta=0.005)
    assert small["kept"] == "member" and small["best_member"] == 1
    assert small["reason"].startswith("ensemble of 3: +0.002 over best member on validation < 0.005: serving the single member")
    large = choose(0.720, [0.690, 0.700, 0.650], min_delta=0.005)
    assert large["kept"] == "ensemble" and large["best_member"] == 1 and large["gain"] == pytest.approx(0.02)
    assert "≥ 0.005: serving the ensemble" in large["reason"]
    assert choose(0.70, [0.70, 0.60], min_delta=0.0)["kept"] == "ensemble"  # a zero bar: not worse is enough


def test_bootstrap_draws_with_replacement_keeping_label_shares() -> None:
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(100)], "label": ["a"] * 80 + ["b"] * 20})
    sample = bootstrap(frame, seed=3)
    assert len(sample) == 100 and sample["text"].nunique() < 100
    assert sample["label"].value_counts().to_dict() == {"a": 80, "b": 20}
    assert not sample.equals(bootstrap(frame, seed=4))


def test_bad_ensemble_settings_say_what_to_fix(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"training.ensemble must be between 1 \(one model\) and 16 members; got 0"):
        Settings.load(home=tmp_path).updated({"training": {"ensemble": 0}})
    with pytest.raises(ConfigError, match=r"gate.ensemble_min_delta must be between 0 and 0.2"):
        Settings.load(home=tmp_path).updated({"gate": {"ensemble_min_delta": -0.1}})
    config = FitConfig(labels=LABELS, training=Settings.load(home=tmp_path).training, max_length=32).with_training(ensemble=2)
    with pytest.raises(ConfigError, match="cannot be combined with a hyperparameter search"):
        fit_ensemble(tmp_path, pd.DataFrame({"text": [], "label": []}), pd.DataFrame({"text": [], "label": []}), config,
                     min_delta=0.005, search_trials=3)


def test_refit_with_an_ensemble_of_two_serves_one_verified_graph(tmp_path, prefect_harness) -> None:
    from refitd.flows.refit import refit

    settings = tiny_settings(tmp_path / "home", model={"max_length": 32},
                             training={"ensemble": 2, "topics": ["apple"], "max_train_rows": 100, "max_test_rows": 150,
                                       "epochs": 1.0, "freeze_layers": 5, "learning_rate": 3e-4, "batch_size": 16},
                             gate={"int8_variants": ["dynamic"], "ensemble_min_delta": 0.0})
    upgrade(make_engine(settings.database_url))
    result = refit(settings, trigger="init", warm_start="base")
    e = result["metrics"]["ensemble"]
    assert e["k"] == 2 and [m["seed"] for m in e["members"]] == [7, 8] and e["kept"] in {"ensemble", "member"}
    assert all(m["rows"] > 0 and 0 <= m["val_macro_f1"] <= 1 for m in e["members"])
    assert e["best_member_val"] == max(m["val_macro_f1"] for m in e["members"])
    assert e["reason"].startswith("ensemble of 2: ") and result["reason"].endswith(e["reason"])
    store = ArtifactStore(settings.models_dir)
    folder = store.verify(result["version"])
    meta = store.meta(result["version"])
    assert meta.outputs == OUTPUTS and meta.labels == ("negative", "neutral", "positive")
    assert json.loads((folder / METRICS_FILE).read_text())["ensemble"] == e
    assert result["metrics"]["parity_max_abs_diff"] < 1e-3 and result["metrics"]["trial_load"]["ok"]
    assert (folder / HF_DIR / "config.json").is_file()
    graph = onnx.load(str(folder / MODEL_FILE), load_external_data=False)
    second = any("/members.1/" in node.name for node in graph.graph.node)
    assert second == (e["kept"] == "ensemble")  # both members in the one graph, or the best member alone
