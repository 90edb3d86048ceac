"""The sections of refitd's settings that say what model is trained and how: the model, training, the
gate, the search and when a refit starts. ``core/service_sections.py`` holds the running service's.

``core/settings.py`` assembles them into ``Settings`` and loads it from its sources; each section
checks its own fields and says what to do when one is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from refitd.core.topics import TOPICS


class Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class ModelSection(Section):
    name: str = Field("refitd", description="Model name served under /v2/models/{name}.")
    base_model: Path | None = Field(
        None,
        description="Local Hugging Face model folder to fine-tune from; unset = the bundled all-MiniLM-L6-v2.",
    )
    max_length: int = Field(64, description="Maximum tokens per text, for training and serving.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v:
            raise ValueError(f"model.name must be non-empty and without '/' (it is served under /v2/models/{{name}}); "
                             f"got {v!r}")
        return v

    @field_validator("max_length")
    @classmethod
    def _max_length(cls, v: int) -> int:
        if not 8 <= v <= 512:
            raise ValueError(f"model.max_length must be between 8 and 512; got {v}")
        return v

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, v: Path | None) -> Path | None:
        if v is not None and not (Path(v).expanduser() / "config.json").is_file():
            raise ValueError(
                f"model.base_model must be a local Hugging Face model folder with a config.json; "
                f"{v} has none"
            )
        return None if v is None else Path(v).expanduser().resolve()  # recorded with each version: absolute


class TrainingSection(Section):
    data: Path | None = Field(
        None, description="CSV / JSONL / Parquet file of labelled texts; unset = the bundled tweet corpus."
    )
    text_column: str = Field("text", description="Column holding the text in `data`.")
    label_column: str = Field("label", description="Column holding the label in `data`.")
    topics: list[str] = Field(
        ["airline"], description="Bundled corpus only: topics to train the first model on."
    )
    max_train_rows: int | None = Field(
        3000, description="Cap on training rows (a stratified sample); unset = all."
    )
    max_test_rows: int | None = Field(
        None, description="Cap on frozen and recent test rows (a stratified sample); unset = all."
    )
    validation_fraction: float = Field(0.1, description="Share of rows held out for validation.")
    test_fraction: float = Field(0.15, description="Share of rows in the frozen test set.")
    epochs: float = Field(3.0, description="Training epochs.")
    batch_size: int = Field(32, description="Training batch size.")
    learning_rate: float = Field(1e-4, description="Peak learning rate.")
    weight_decay: float = Field(0.01, description="L2 weight decay.")
    l1: float = Field(
        0.0, description="L1 penalty: this times the summed |weight| of the trainable weight matrices is added to "
                         "the loss (biases and LayerNorm excluded); 0 = off."
    )
    warmup_ratio: float = Field(0.06, description="Share of steps used for linear warm-up.")
    lr_scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warm-up."
    )
    optimizer: Literal["adamw", "sgd", "rmsprop"] = Field("adamw", description="Optimizer.")
    freeze_embeddings: bool = Field(True, description="Keep the embedding layer frozen.")
    freeze_layers: int = Field(3, description="Number of lowest encoder layers kept frozen.")
    dropout: float | None = Field(None, description="Hidden dropout; unset = the model's own.")
    label_smoothing: float = Field(0.0, description="Label smoothing factor.")
    early_stopping_patience: int = Field(
        2, description="Evaluations without a macro-F1 gain before training stops."
    )
    seed: int = Field(42, description="Random seed for sampling, splits and training.")
    threads: int | None = Field(None, description="CPU threads for training; unset = all cores.")
    warm_start: Literal["champion", "base"] = Field(
        "champion", description="Refit from the current champion's weights, or from the base model."
    )
    unfreeze_every_epochs: float | None = Field(
        None, description="Gradual unfreezing: unfreeze one more frozen layer (top down) every this many epochs."
    )
    augment: bool = Field(False, description="Augment training texts (random deletion / swap / insertion).")
    augment_copies: int = Field(1, description="Augmented copies added per training text when augment is on.")
    replay_ratio: float = Field(
        1.0, description="Older labelled rows replayed per new labelled row, so a refit does not forget."
    )
    min_reference_share: float = Field(
        0.3, description="Reference rows are at least this share of every refit's training rows, however many new labels arrive."
    )
    recent_test_fraction: float = Field(
        0.2, description="Share of new labelled production rows held out as the recent test set."
    )
    min_rows: int = Field(100, description="A refit with fewer training rows fails with that reason.")
    min_class_share: float = Field(0.02, description="Every label must be at least this share of training rows.")
    ensemble: int = Field(
        1, description="Bagging: 1 = one model; K > 1 = K members, each fine-tuned with seed + i on a stratified "
                       "bootstrap of the training rows, served as one ONNX graph averaging their logits and embeddings "
                       "(or the best member alone when the gain is under gate.ensemble_min_delta)."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainingSection:
        if self.batch_size < 1:
            raise ValueError(f"training.batch_size must be ≥ 1; got {self.batch_size}")
        if self.epochs <= 0:
            raise ValueError(f"training.epochs must be > 0; got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"training.learning_rate must be in (0, 1); got {self.learning_rate}")
        if not 0 <= self.l1 < 0.01:
            raise ValueError(f"training.l1 must be in [0, 0.01) (it multiplies the summed |weight|); got {self.l1}")
        if not 0 <= self.freeze_layers <= 48:
            raise ValueError(f"training.freeze_layers must be between 0 and 48; got {self.freeze_layers}")
        if self.validation_fraction + self.test_fraction >= 0.8:
            raise ValueError(
                "training.validation_fraction + training.test_fraction must leave ≥ 20% for training; "
                f"got {self.validation_fraction} + {self.test_fraction}"
            )
        if not 0 <= self.min_reference_share < 1:
            raise ValueError(f"training.min_reference_share must be in [0, 1); got {self.min_reference_share}")
        unknown = [t for t in self.topics if t not in TOPICS]
        if unknown:
            raise ValueError(f"training.topics has unknown topic(s) {', '.join(map(repr, unknown))}; "
                             f"the bundled corpus's topics are {', '.join(TOPICS)}")
        if self.max_train_rows is not None and self.max_train_rows < 50:
            raise ValueError(f"training.max_train_rows must be ≥ 50 or unset; got {self.max_train_rows}")
        if not 1 <= self.ensemble <= 16:
            raise ValueError(f"training.ensemble must be between 1 (one model) and 16 members; got {self.ensemble}")
        return self


class GateSection(Section):
    primary_metric: Literal["macro_f1", "accuracy"] = Field("macro_f1", description="Metric the gate compares.")
    min_delta: float = Field(
        0.01, description="A candidate must beat the champion by this much on the recent test set."
    )
    max_regression: float = Field(
        0.02, description="…and may lose at most this much on the frozen test set."
    )
    baseline_margin: float = Field(
        0.05, description="With no champion, a candidate must beat the majority-class baseline by this much."
    )
    int8_tolerance: float = Field(
        0.005, description="Export keeps the fastest INT8 variant whose validation accuracy is within this of fp32's; "
                           "it is served unless a test set shows it further below fp32 than this (paired bootstrap at gate.confidence)."
    )
    int8_variants: list[Literal["dynamic", "dynamic_per_channel", "static", "static_keep_first"]] = Field(
        ["dynamic", "dynamic_per_channel", "static", "static_keep_first"],
        description="INT8 recipes built and timed at export (flows/quantize.py): dynamic = activations quantized per "
                    "batch; static = QDQ with activation ranges calibrated on training rows; per_channel / static = "
                    "per-channel weights; keep_first = the first encoder layer stays fp32. Fallbacks: static is built only when "
                    "every listed dynamic recipe misses the tolerance, keep_first only when static misses it. Only "
                    "variants within the tolerance are timed. [] = no INT8 graph.",
    )
    int8_calibration_rows: int = Field(
        256, description="Training rows the static INT8 variants are calibrated on (through the served tokenizer)."
    )
    ensemble_min_delta: float = Field(
        0.005, description="With training.ensemble > 1, the ensemble is served only if its validation macro-F1 beats its "
                           "best member's by at least this much; otherwise that member is served alone."
    )
    confidence: float = Field(
        0.9, description="How sure the gate must be: a paired bootstrap's one-sided bound at this level must clear "
                         "min_delta on the recent set and -max_regression on the frozen set."
    )
    min_recent_rows: int = Field(
        30, ge=1, description="A recent test set smaller than this does not decide (a bootstrap over a handful of "
                              "rows gives a bound far narrower than the truth): the frozen set must show the gain."
    )
    shadow_minutes: float = Field(
        0.0, description="After the offline gate, score live traffic in shadow for this many minutes before promoting "
                         "(answers still from the champion); 0 = promote on the offline gate alone."
    )
    shadow_share: float = Field(
        0.25, description="Share of requests the shadow scores, off the request path (dropped, never queued without "
                          "bound, when it falls behind)."
    )
    shadow_min_labels: int = Field(
        30, description="Labelled shadow-scored requests needed to judge the shadow on live accuracy; with fewer it is "
                        "judged on agreement with the champion."
    )
    shadow_min_delta: float = Field(
        0.0, description="With enough live labels, the shadow is promoted only if its accuracy on them beats the "
                         "champion's on the same requests by at least this much."
    )
    shadow_min_agreement: float = Field(
        0.5, description="With too few live labels, the shadow is promoted only if it gives the champion's answer to at "
                         "least this share of requests (a floor that catches a broken candidate, not a better one)."
    )
    shadow_min_rows: int = Field(
        50, description="Requests the shadow must have scored before it is judged; until then it keeps waiting."
    )
    shadow_max_minutes: float = Field(
        240.0, description="A shadow that has not scored `shadow_min_rows` requests by then (too little traffic, or no "
                           "server could load it) is ended on the offline gate it passed: promoted, with that reason; "
                           "refits are held while a version is in shadow, so this bounds the hold."
    )

    @model_validator(mode="after")
    def _shadow(self) -> GateSection:
        if self.shadow_minutes < 0:
            raise ValueError(f"gate.shadow_minutes must be ≥ 0 (0 = no shadow); got {self.shadow_minutes}")
        if not 0 < self.shadow_share <= 1:
            raise ValueError(f"gate.shadow_share must be in (0, 1]; got {self.shadow_share}")
        if not 0 <= self.shadow_min_agreement <= 1:
            raise ValueError(f"gate.shadow_min_agreement must be in [0, 1]; got {self.shadow_min_agreement}")
        if self.shadow_max_minutes < 0:
            raise ValueError(f"gate.shadow_max_minutes must be ≥ 0; got {self.shadow_max_minutes}")
        if self.shadow_min_labels < 1 or self.shadow_min_rows < 1:
            raise ValueError("gate.shadow_min_labels and gate.shadow_min_rows must be ≥ 1; got "
                             f"{self.shadow_min_labels} and {self.shadow_min_rows}")
        return self

    @field_validator("confidence")
    @classmethod
    def _confidence(cls, v: float) -> float:
        if not 0.5 <= v < 1:
            raise ValueError(f"gate.confidence must be in [0.5, 1); got {v}")
        return v

    @field_validator("int8_tolerance")
    @classmethod
    def _int8_tolerance(cls, v: float) -> float:
        if not 0 <= v <= 0.2:
            raise ValueError(f"gate.int8_tolerance must be between 0 and 0.2 (accuracy points as a fraction); got {v}")
        return v

    @field_validator("ensemble_min_delta")
    @classmethod
    def _ensemble_min_delta(cls, v: float) -> float:
        if not 0 <= v <= 0.2:
            raise ValueError(f"gate.ensemble_min_delta must be between 0 and 0.2 (macro-F1 as a fraction); got {v}")
        return v

    @field_validator("int8_calibration_rows")
    @classmethod
    def _int8_calibration_rows(cls, v: int) -> int:
        if not 16 <= v <= 10_000:
            raise ValueError(f"gate.int8_calibration_rows must be between 16 and 10000; got {v}")
        return v


class HpoSection(Section):
    trials: int = Field(0, description="Optuna trials per refit; 0 = no search, use the training settings.")
    sampler: Literal["grid", "random", "tpe", "evolutionary"] = Field(
        "tpe", description="grid, random, Bayesian (TPE) or evolutionary (NSGA-II, a genetic algorithm)."
    )
    pruner: Literal["hyperband", "none"] = Field("hyperband", description="Stop unpromising trials early.")
    budget_minutes: float = Field(30.0, description="Wall-clock budget for the whole search.")
    learning_rate: list[float] = Field([2e-5, 5e-5, 1e-4, 2e-4], description="Learning rates to search.")
    freeze_layers: list[int] = Field([0, 2, 4], description="Frozen lower layers to search.")
    epochs: list[float] = Field([1.0, 2.0, 3.0], description="Epoch counts to search.")
    weight_decay: list[float] = Field([0.0, 0.01, 0.1], description="L2 weight decays to search.")
    l1: list[float] = Field([0.0], description="L1 penalties to search (e.g. [0, 1e-6, 1e-5]).")
    dropout: list[float] = Field([0.1, 0.2], description="Dropout rates to search.")
    batch_size: list[int] = Field([16, 32], description="Batch sizes to search.")


class RefitSection(Section):
    min_new_labels: int = Field(
        200, description="A drift verdict starts a refit only once this many labels arrived since the champion was trained."
    )
    cooldown_minutes: float = Field(60.0, description="Minimum minutes between the starts of two refits.")
    retry_new_labels: int = Field(
        100, ge=0, description="After a refit whose candidate is not serving (rejected by the gate, or promoted and "
        "rolled back), a drift or label refit waits for this many labels newer than that candidate's: the same data "
        "trains the same model, to be refused, or promoted and rolled back, again.")
    nice: int = Field(10, description="CPU niceness of a local refit process (0-19), so serving stays responsive.")
    threads: int = Field(1, description="CPU threads a local refit may use (torch, OpenMP, tokenizers).")
    quick: bool = Field(False, description="Refit on a small sample with short texts (demos, tests).")
    timeout_minutes: float = Field(180.0, description="A refit still running after this long is stopped and failed.")
    lease_s: float = Field(
        120.0, description="The refit lock's lease; renewed while the refit runs, free once its holder died."
    )
    stop_timeout_s: float = Field(30.0, description="On shutdown, how long to wait for a running refit to stop.")

    @field_validator("nice")
    @classmethod
    def _nice(cls, v: int) -> int:
        if not 0 <= v <= 19:
            raise ValueError(f"refit.nice must be between 0 and 19; got {v}")
        return v
