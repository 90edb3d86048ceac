"""``python -m refitd.bench train``: refit's training loop vs a plain Trainer baseline, same data, same run.

refit: dynamic padding, length grouping, embeddings + lower layers frozen, max_length
64, early stopping on validation macro-F1 (the project's defaults). Baseline: HF
Trainer, all layers trainable, every text padded to max_length=128, random order.
Both see the same 3k airline training tweets for the same epochs, and are scored
on the same frozen test set with the same code.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from refitd.bench.report import save
from refitd.core.datasets import load_configured, stratified_sample
from refitd.flows.evaluate import report_from_logits
from refitd.flows.finetune import FitConfig, fit, predict_torch



def _data(rows: int, seed: int):
    frame = load_configured(data=None, text_column="text", label_column="label", topics=["airline"],
                            validation_fraction=0.1, test_fraction=0.15)
    train = stratified_sample(frame[frame["split"] == "train"], rows, seed=seed)
    val = stratified_sample(frame[frame["split"] == "validation"], rows // 3, seed=seed)
    test = frame[frame["split"] == "test"]
    return train, val, test, sorted(frame["label"].unique())


class _Padded(torch.utils.data.Dataset):
    def __init__(self, tokenizer, texts, labels, max_length):  # type: ignore[no-untyped-def]
        self.enc = tokenizer(texts, truncation=True, padding="max_length", max_length=max_length)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        return {"input_ids": self.enc["input_ids"][i], "attention_mask": self.enc["attention_mask"][i], "labels": self.labels[i]}


def baseline(source: Path, train, labels: list[str], *, epochs: float, lr: float, batch: int, seed: int):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(labels))
    ds = _Padded(tokenizer, train["text"].tolist(), [labels.index(x) for x in train["label"]], 128)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch,
                                 learning_rate=lr, weight_decay=0.01, seed=seed, report_to=[], save_strategy="no",
                                 use_cpu=not torch.cuda.is_available(), disable_tqdm=True, logging_strategy="no")
        trainer = Trainer(model=model, args=args, train_dataset=ds)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return model.eval(), tokenizer, seconds


def run(rows: int, epochs: float, seed: int) -> dict[str, Any]:
    from refitd.core.settings import Settings  # here, not above: `bench defaults` imports this module on
    from refitd.flows.refit import base_model_path  # machines that have only the training stack

    settings = Settings.load(home=tempfile.mkdtemp())
    source = base_model_path(settings)
    train, val, test, labels = _data(rows, seed)
    settings = settings.updated({"training": {"epochs": epochs, "seed": seed}})
    t = settings.training
    config = FitConfig(labels=labels, training=t, max_length=64)
    ours = fit(source, train, val, config)
    ours_report = report_from_logits(predict_torch(ours.model, ours.tokenizer, test["text"].tolist(), max_length=64),
                                     test["label"].tolist(), labels)
    base_model, base_tok, base_s = baseline(source, train, labels, epochs=epochs, lr=t.learning_rate,
                                            batch=t.batch_size, seed=seed)
    base_report = report_from_logits(predict_torch(base_model, base_tok, test["text"].tolist(), max_length=128),
                                     test["label"].tolist(), labels)
    # examples/s over the epochs actually run (early stopping may end refit's loop sooner)
    ours_eps = ours.examples_per_second
    base_eps = len(train) * epochs / base_s
    return {"rows": len(train), "epochs": epochs, "test_n": len(test),
            "refit": {"seconds": ours.train_seconds, "examples_per_s": ours_eps, "accuracy": ours_report["accuracy"],
                      "macro_f1": ours_report["macro_f1"]},
            "baseline": {"seconds": base_s, "examples_per_s": base_eps, "accuracy": base_report["accuracy"],
                         "macro_f1": base_report["macro_f1"]}}


def render(r: dict[str, Any]) -> str:
    a, b = r["refit"], r["baseline"]
    return "\n".join([
        f"train: {r['rows']} airline tweets, {r['epochs']:g} epochs, frozen test set n={r['test_n']}", "",
        "| loop | seconds | examples/s | test accuracy | test macro-F1 |", "|---|---:|---:|---:|---:|",
        f"| refit (frozen lower layers, dynamic padding, length groups, max_len 64) | {a['seconds']:.0f} | "
        f"{a['examples_per_s']:.1f} | {a['accuracy']:.3f} | {a['macro_f1']:.3f} |",
        f"| baseline (all layers, pad to 128, random order) | {b['seconds']:.0f} | {b['examples_per_s']:.1f} | "
        f"{b['accuracy']:.3f} | {b['macro_f1']:.3f} |", "",
        "| ratio | value | target |", "|---|---:|---:|",
        f"| examples/s refit / baseline | {a['examples_per_s'] / b['examples_per_s']:.2f}× | ≥ 1.5× |",
        f"| macro-F1 refit − baseline | {100 * (a['macro_f1'] - b['macro_f1']):+.1f} pt | ≥ −0.5 pt |",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench train")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    result = run(args.rows, args.epochs, args.seed)
    print(render(result))
    save("train", result)
    return 0


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    a, b = r["refit"], r["baseline"]
    return [("examples/s refit / plain Trainer", f"{a['examples_per_s'] / b['examples_per_s']:.2f}×", "≥ 1.5×"),
            ("test macro-F1 refit − plain Trainer", f"{100 * (a['macro_f1'] - b['macro_f1']):+.1f} pt", "≥ −0.5 pt")]
