"""``python -m refitd.bench ensemble``: a K-member bagged ensemble vs one model, same data, same run.

Both are fine-tuned with refit's loop (``flows/finetune.fit``) on the same airline training rows
and early-stop on the same validation rows; the single model sees the training rows once, each
member a bootstrap of them with seed + i (``flows/ensemble.fit_members``). Both are exported through
the refit's export path (one ONNX graph each, the ensemble averaging its members) and scored on the
same held-out test rows through ONNX Runtime. Serving cost: texts/s at batch 1 and batch 32 of both
fp32 graphs, timed round-robin with the server's session options and the same threads
(``flows/quantize.time_graphs``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from refitd.bench.report import save
from refitd.bench.train import _data
from refitd.core.settings import Settings
from refitd.flows import quantize
from refitd.flows.ensemble import MeanOfMembers, choose, fit_members
from refitd.flows.evaluate import onnx_logits, report_from_logits
from refitd.flows.export import export_onnx
from refitd.flows.finetune import FitConfig, fit, predict_torch
from refitd.flows.refit import base_model_path

MAX_LENGTH = 64


def _score(path: Path, tokenizer_json: Path, test, labels: list[str]) -> dict[str, float]:
    logits = onnx_logits(path, tokenizer_json, test["text"].tolist(), max_length=MAX_LENGTH)
    report = report_from_logits(logits, test["label"].tolist(), labels)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def run(rows: int, epochs: float, k: int, seed: int, test_rows: int, threads: int | None, rounds: int) -> dict[str, Any]:
    settings = Settings.load(home=tempfile.mkdtemp(prefix="refitd-bench-"))
    source = base_model_path(settings)
    train, val, test, labels = _data(rows, seed)
    test = test.sample(n=min(test_rows, len(test)), random_state=seed)
    training = settings.training.model_copy(update={"epochs": epochs, "seed": seed})
    config = FitConfig(labels=labels, training=training, max_length=MAX_LENGTH)
    single = fit(source, train, val, config)
    fits, members, val_logits = fit_members(source, train, val, config.with_training(ensemble=k))
    ensemble = MeanOfMembers([f.model for f in fits]).eval()
    single_val = report_from_logits(predict_torch(single.model, single.tokenizer, val["text"].tolist(),
                                                  max_length=MAX_LENGTH), val["label"].tolist(), labels)["macro_f1"]
    ensemble_val = report_from_logits(np.mean(val_logits, axis=0), val["label"].tolist(), labels)["macro_f1"]
    gate = choose(ensemble_val, [m["val_macro_f1"] for m in members], min_delta=settings.gate.ensemble_min_delta)
    with tempfile.TemporaryDirectory(prefix="refitd-bench-ensemble-") as tmp:
        folder = Path(tmp)
        tokenizer_json = folder / "tokenizer.json"
        single.tokenizer.backend_tokenizer.save(str(tokenizer_json))
        paths = {"single": export_onnx(single.model, single.tokenizer, folder / "single.onnx"),
                 "ensemble": export_onnx(ensemble, single.tokenizer, folder / "ensemble.onnx")}
        scores = {name: _score(path, tokenizer_json, test, labels) for name, path in paths.items()}
        sessions = {name: quantize.session(path, threads) for name, path in paths.items()}
        speed = quantize.time_graphs(sessions, test["text"].tolist(), tokenizer_json, max_length=MAX_LENGTH,
                                     rounds=rounds, baseline="single")
        sizes = {name: path.stat().st_size / 1e6 for name, path in paths.items()}
    out = {name: {**scores[name], "batch1_texts_per_s": 1000 / speed[name]["single_p50_ms"],
                  "batch1_p50_ms": speed[name]["single_p50_ms"], "batch32_texts_per_s": speed[name]["batch32_texts_per_s"],
                  "onnx_mb": sizes[name]} for name in paths}
    out["single"] |= {"train_seconds": single.train_seconds, "val_macro_f1": single_val}
    out["ensemble"] |= {"train_seconds": sum(f.train_seconds for f in fits), "val_macro_f1": ensemble_val,
                        "members": members}
    return {"rows": len(train), "validation_rows": len(val), "test_n": len(test), "epochs": epochs, "k": k,
            "threads": threads, "max_length": MAX_LENGTH, "gate": gate, **out}


def render(r: dict[str, Any]) -> str:
    s, e = r["single"], r["ensemble"]
    head = (f"ensemble: {r['rows']} airline tweets, {r['epochs']:g} epochs, K={r['k']} bootstrap members vs one model; "
            f"held-out test n={r['test_n']}, fp32 ONNX, threads {r['threads'] or 'all'}")
    rows = [f"| {name} | {v['accuracy']:.3f} | {v['macro_f1']:.3f} | {v['val_macro_f1']:.3f} | {v['train_seconds']:.0f} | "
            f"{v['batch1_texts_per_s']:.1f} | {v['batch32_texts_per_s']:.1f} | {v['onnx_mb']:.0f} |"
            for name, v in (("single", s), (f"ensemble of {r['k']}", e))]
    members = ", ".join(f"seed {m['seed']} {m['val_macro_f1']:.3f}" for m in e["members"])
    return "\n".join([
        head, "",
        "| model | test accuracy | test macro-F1 | val macro-F1 | train s | texts/s batch 1 | texts/s batch 32 | MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
        f"members' validation macro-F1: {members}", f"refit's rule on validation: {r['gate']['reason']}", "",
        "| ratio | value |", "|---|---:|",
        *(f"| {name} | {value} |" for name, value, _ in ratios(r)),
    ])


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    s, e = r["single"], r["ensemble"]
    return [("test macro-F1 ensemble − single", f"{100 * (e['macro_f1'] - s['macro_f1']):+.1f} pt", "—"),
            ("test accuracy ensemble − single", f"{100 * (e['accuracy'] - s['accuracy']):+.1f} pt", "—"),
            ("texts/s batch 1 ensemble / single", f"{e['batch1_texts_per_s'] / s['batch1_texts_per_s']:.2f}×", "—"),
            ("texts/s batch 32 ensemble / single", f"{e['batch32_texts_per_s'] / s['batch32_texts_per_s']:.2f}×", "—"),
            ("train seconds ensemble / single", f"{e['train_seconds'] / max(s['train_seconds'], 1e-9):.2f}×", "—")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench ensemble")
    p.add_argument("--rows", type=int, default=3000, help="training rows (validation: a third as many)")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--k", type=int, default=3, help="ensemble members")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--test-rows", type=int, default=2000, help="held-out rows scored (a sample of the frozen test split)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (median of round-robin ratios)")
    args = p.parse_args(argv)
    if args.k < 2:
        p.error(f"--k must be ≥ 2 (an ensemble); got {args.k}")
    result = run(args.rows, args.epochs, args.k, args.seed, args.test_rows, args.threads, args.rounds)
    print(render(result))
    save("ensemble", result)
    return 0
