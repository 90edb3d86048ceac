"""Fine-tuning a sequence classifier with transformers' Trainer.

Dynamic padding and length grouping, frozen embeddings and lower layers with
optional gradual unfreezing (top down), the optimizer / schedule / L2 /
dropout / label smoothing a practitioner expects, early stopping on
validation macro-F1 keeping the best checkpoint.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from refitd.core.errors import ConfigError, TrainingError
from refitd.core.sections import TrainingSection
from refitd.flows.evaluate import classification_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """One fine-tuning run: the training settings (the one declaration of every hyper-parameter)
    plus what the data and the model decide: the label set and the maximum length."""

    labels: list[str]
    training: TrainingSection
    max_length: int
    group_by_length: bool = True
    evals_per_epoch: int = 1

    def with_training(self, **changes: Any) -> FitConfig:
        """The same run with some hyper-parameters changed (validated like settings)."""
        updated = TrainingSection.model_validate({**self.training.model_dump(), **changes})
        return replace(self, training=updated)

    def record(self) -> dict[str, Any]:
        """A flat, JSON-able record stored beside the weights."""
        return {"labels": self.labels, "max_length": self.max_length, "group_by_length": self.group_by_length,
                "evals_per_epoch": self.evals_per_epoch, **self.training.model_dump(mode="json")}


@dataclass
class FitResult:
    model: PreTrainedModel
    tokenizer: Any
    train_seconds: float
    examples_per_second: float
    best_metric: float | None
    history: list[dict[str, Any]]
    device: str
    ensemble: dict[str, Any] | None = None  # training.ensemble > 1: members, validation scores, what was kept and why


_OPTIMIZERS = {"adamw": ("adamw_torch", None), "sgd": ("sgd", "momentum=0.9"), "rmsprop": ("rmsprop", None)}


def device_name() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(source: Path, labels: list[str], *, dropout: float | None) -> tuple[PreTrainedModel, Any]:
    """A classifier with ``len(labels)`` outputs from a local Hugging Face folder (new head if needed; a
    champion's head keeps each label's row where that label still is: :func:`align_head`)."""
    extra: dict[str, Any] = {}
    if dropout is not None:
        extra = {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout, "classifier_dropout": dropout}
    before = AutoConfig.from_pretrained(str(source))
    source_labels = [str(before.id2label[i]) for i in range(before.num_labels)] if before.id2label else []
    model = AutoModelForSequenceClassification.from_pretrained(
        str(source),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={lbl: i for i, lbl in enumerate(labels)},
        ignore_mismatched_sizes=True,
        **extra,
    )
    if source_labels != labels and len(source_labels) == len(labels):
        align_head(model, source_labels, labels, _head(model, len(labels)))  # loaded as it was: row i, label i
    elif source_labels != labels and set(source_labels) & set(labels):
        # the loader gave a new layer of the new size: the rows of the labels kept are read from the source
        align_head(model, source_labels, labels,
                   _head(AutoModelForSequenceClassification.from_pretrained(str(source)), len(source_labels)))
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    return model, tokenizer


def _head(model: PreTrainedModel, outputs: int) -> torch.nn.Linear:
    """The output layer: the last linear layer with one output per label."""
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == outputs][-1]


def align_head(model: PreTrainedModel, source_labels: list[str], labels: list[str], trained: torch.nn.Linear) -> None:
    """Give each label the output row it had in the source's output layer ``trained``, and a fresh row to a
    label the source lacked: when the label set changed (``neutral`` renamed ``mixed`` moves every row after it
    in sorted order; a class added or dropped changes the layer's size), row ``i`` would otherwise start out
    meaning another label, or nothing trained at all."""
    head = _head(model, len(labels))
    weight = trained.weight.data.clone()
    bias = trained.bias.data.clone() if trained.bias is not None else None
    std = getattr(model.config, "initializer_range", 0.02)
    with torch.no_grad():
        for i, label in enumerate(labels):
            j = source_labels.index(label) if label in source_labels else None
            head.weight[i] = weight[j] if j is not None else torch.randn_like(head.weight[i]) * std
            if head.bias is not None:
                head.bias[i] = bias[j] if j is not None and bias is not None else 0.0
    kept = [lbl for lbl in labels if lbl in source_labels]
    log.info("output layer aligned to the label set %s (%d rows kept from the source, %d new)", labels,
             len(kept), len(labels) - len(kept))


def encoder_layers(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The encoder's blocks, lowest first: where BERT-like models keep them (``encoder.layer``, DistilBERT's
    ``transformer.layer``, ``layers`` of ModernBERT-like ones), else the one list of ``num_hidden_layers``
    modules in the base model."""
    base = model.base_model
    for owner in (getattr(base, "encoder", None), getattr(base, "transformer", None), base):
        for name in ("layer", "layers"):
            layers = getattr(owner, name, None)
            if isinstance(layers, torch.nn.ModuleList) and len(layers):
                return list(layers)
    depth = getattr(model.config, "num_hidden_layers", None)
    found = [m for m in base.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == depth]
    if len(found) == 1:
        return list(found[0])
    raise ConfigError(f"cannot find the encoder layers of {type(model).__name__} to freeze; set "
                      "training.freeze_layers = 0 and training.unfreeze_every_epochs = 0")


def apply_freezing(model: PreTrainedModel, *, freeze_embeddings: bool, freeze_layers: int) -> dict[str, int]:
    """Freeze the embeddings and the lowest ``freeze_layers`` encoder layers; return parameter counts."""
    embeddings = getattr(model.base_model, "embeddings", None)
    if freeze_embeddings and embeddings is not None:
        for p in embeddings.parameters():
            p.requires_grad = False
    for layer in encoder_layers(model)[:freeze_layers] if freeze_layers else []:
        for p in layer.parameters():
            p.requires_grad = False
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": trainable, "total_params": sum(p.numel() for p in model.parameters())}


class GradualUnfreezing(TrainerCallback):
    """Every ``every`` epochs unfreeze the highest still-frozen encoder layer (top down)."""

    def __init__(self, model: PreTrainedModel, every: float) -> None:
        self.frozen = [layer for layer in encoder_layers(model) if not any(p.requires_grad for p in layer.parameters())]
        self.every = every
        self.next_at = every

    def on_epoch_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        while self.frozen and state.epoch is not None and state.epoch + 1e-6 >= self.next_at:
            layer = self.frozen.pop()
            for p in layer.parameters():
                p.requires_grad = True
            self.next_at += self.every
            log.info("epoch %.1f: unfroze one more encoder layer (%d still frozen)", state.epoch, len(self.frozen))


class _Trainer(Trainer):
    """Trainer whose optimizer knows every parameter, so layers unfrozen later do train, and whose loss
    carries the L1 penalty when ``l1`` > 0."""

    def __init__(self, *args: Any, l1: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l1 = l1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        out = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not self.l1:
            return out
        loss, outputs = out if return_outputs else (out, None)
        loss = loss + self.l1 * l1_norm(model)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):  # type: ignore[no-untyped-def]
        target = model if model is not None else self.model
        frozen = [p for p in target.parameters() if not p.requires_grad]
        for p in frozen:
            p.requires_grad = True
        try:
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        finally:
            for p in frozen:
                p.requires_grad = False  # no gradient → the optimizer skips them until unfrozen


def l1_norm(model: torch.nn.Module) -> torch.Tensor:
    """Summed |w| of the trainable weight matrices (biases and LayerNorm weights, 1-D, left out)."""
    weights = [p.abs().sum() for p in model.parameters() if p.requires_grad and p.dim() > 1]
    return torch.stack(weights).sum() if weights else torch.zeros(())


class _Rows(torch.utils.data.Dataset):
    def __init__(self, tokenizer: Any, texts: list[str], label_ids: list[int], max_length: int) -> None:
        enc = tokenizer(texts, truncation=True, max_length=max_length)
        self.items = [
            {"input_ids": ids, "attention_mask": mask, "labels": lbl}
            for ids, mask, lbl in zip(enc["input_ids"], enc["attention_mask"], label_ids, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def _metrics(eval_pred: Any) -> dict[str, float]:
    """Validation scores during training: the same report the gate reads, over every label id."""
    logits, label_ids = eval_pred
    logits = np.asarray(logits)
    report = classification_report(np.asarray(label_ids).tolist(), logits.argmax(axis=-1).tolist(),
                                   list(range(logits.shape[-1])))
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def fit(
    source: Path,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: FitConfig,
    *,
    callbacks: list[TrainerCallback] | None = None,
) -> FitResult:
    """Fine-tune the model in ``source`` on ``train`` (text, label), early-stopping on ``validation``."""
    t = config.training
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    model, tokenizer = load_model(source, config.labels, dropout=t.dropout)
    counts = apply_freezing(model, freeze_embeddings=t.freeze_embeddings, freeze_layers=t.freeze_layers)
    log.info("fine-tuning %s: %d of %d parameters trainable", source.name, counts["trainable_params"], counts["total_params"])
    label_id = {lbl: i for i, lbl in enumerate(config.labels)}
    train_ds = _Rows(tokenizer, train["text"].tolist(), [label_id[x] for x in train["label"]], config.max_length)
    # scored in order of length: each evaluation batch pads little (metrics do not depend on the order; on one
    # thread an evaluation of 800 tweets took 10.9 s sorted vs 13.5 s in the data's order)
    by_length = validation.iloc[np.argsort(validation["text"].str.len().to_numpy(), kind="stable")]
    val_ds = _Rows(tokenizer, by_length["text"].tolist(), [label_id[x] for x in by_length["label"]], config.max_length)
    steps_per_epoch = max(1, -(-len(train_ds) // t.batch_size))
    eval_steps = max(1, steps_per_epoch // max(1, config.evals_per_epoch))
    optim, optim_args = _OPTIMIZERS[t.optimizer]
    extra_callbacks = list(callbacks or [])
    if t.unfreeze_every_epochs and t.freeze_layers:  # nothing frozen, nothing to unfreeze
        extra_callbacks.append(GradualUnfreezing(model, t.unfreeze_every_epochs))
    with tempfile.TemporaryDirectory(prefix="refitd-train-") as out:
        args = TrainingArguments(
            output_dir=out,
            num_train_epochs=t.epochs,
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=max(64, t.batch_size),
            learning_rate=t.learning_rate,
            weight_decay=t.weight_decay,
            warmup_steps=t.warmup_ratio,  # a float < 1 is a share of all steps
            lr_scheduler_type=t.lr_scheduler,
            optim=optim,
            optim_args=optim_args,
            label_smoothing_factor=t.label_smoothing,
            train_sampling_strategy="group_by_length" if config.group_by_length else "random",
            eval_strategy="steps",
            eval_steps=eval_steps,
            save_strategy="steps",
            save_steps=eval_steps,
            save_total_limit=2,
            load_best_model_at_end=True,
            metric_for_best_model="macro_f1",
            greater_is_better=True,
            logging_steps=max(1, eval_steps // 4),
            seed=t.seed,
            data_seed=t.seed,
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0,
            disable_tqdm=not _progress_wanted(),
            save_only_model=True,
        )
        trainer = _Trainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            processing_class=tokenizer,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=_metrics,
            callbacks=[EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience), *extra_callbacks],
            l1=t.l1,
        )
        start = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - start
        history = [dict(h) for h in trainer.state.log_history]
        best = trainer.state.best_metric
    model = trainer.model.to("cpu").eval()
    if not all(torch.isfinite(p).all() for p in model.parameters()):  # say so here, not as an export parity error
        raise TrainingError(f"training diverged: the model's weights hold NaN or inf after {seconds:.0f} s "
                            f"(learning rate {t.learning_rate:g}); lower training.learning_rate or check the data")
    samples = output.metrics.get("train_samples_per_second") or (len(train_ds) * t.epochs / seconds)
    return FitResult(model, tokenizer, seconds, float(samples), best, history, device_name())


def _progress_wanted() -> bool:
    return os.environ.get("REFITD_PROGRESS", "1") != "0"


@torch.no_grad()
def predict_torch(model: PreTrainedModel, tokenizer: Any, texts: list[str], *, max_length: int, batch_size: int = 64) -> np.ndarray:
    """Class logits from the torch model (used for the 'before' column and export parity)."""
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        enc.pop("token_type_ids", None)
        out.append(model(**enc.to(model.device)).logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)
