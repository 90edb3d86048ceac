"""``python -m refitd.bench defaults``: the search that chooses refit's training defaults, and its check.

Three steps, each on the same airline rows as ``bench train``:

1. **search** — refit's own hyper-parameter search (``flows.hpo.search``, the grid sampler, no pruning)
   over frozen lower layers × peak learning rate at the current epochs, scored on validation macro-F1
   as every refit's search is. Every trial is recorded.
2. **confirm** — the search's best point, the current defaults and a plain Trainer (all layers, pad to
   128, random order: ``bench train``'s baseline), each with several seeds, scored on the frozen test
   set: the medians and the spread decide, not one lucky seed.
3. **speed** — examples/s of each on the CPU with ``--threads`` threads (one epoch on ``--speed-rows``
   rows), since the defaults must stay ≥ 3× the plain Trainer where refits run: beside serving, on CPUs.

Selection on validation, confirmation on test, speed on the CPU: a GPU machine can run steps 1 and 2
in minutes (``--steps search,confirm``) and this machine step 3 (``--steps speed``); the results are
saved per step and ``--steps`` picks up the saved ones it does not run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from refitd.bench.report import latest, save
from refitd.bench.train import _data, baseline
from refitd.core.sections import HpoSection, TrainingSection
from refitd.flows.evaluate import report_from_logits
from refitd.flows.finetune import FitConfig, fit, predict_torch
from refitd.flows.hpo import search

MAX_LENGTH = 64
FREEZE = [0, 1, 2, 3]
LEARNING_RATES = [5e-5, 1e-4, 2e-4]


def _source(path: Path | None) -> Path:
    if path is not None:
        return path
    import tempfile

    from refitd.core.settings import Settings
    from refitd.flows.refit import base_model_path

    return base_model_path(Settings.load(home=tempfile.mkdtemp()))


def _config(labels: list[str], params: dict[str, Any], *, epochs: float, seed: int, threads: int | None = None) -> FitConfig:
    training = TrainingSection(**{**params, "epochs": epochs, "seed": seed, "threads": threads})
    return FitConfig(labels=labels, training=training, max_length=MAX_LENGTH)


def current_defaults() -> dict[str, Any]:
    t = TrainingSection()
    return {"freeze_layers": t.freeze_layers, "learning_rate": t.learning_rate}


def run_search(source: Path, rows: int, epochs: float, seed: int) -> dict[str, Any]:
    train, val, _test, labels = _data(rows, seed)
    t = TrainingSection()
    hpo = HpoSection(trials=len(FREEZE) * len(LEARNING_RATES), sampler="grid", pruner="none", budget_minutes=120,
                     learning_rate=LEARNING_RATES, freeze_layers=FREEZE, epochs=[epochs], weight_decay=[t.weight_decay],
                     l1=[t.l1], dropout=[0.1], batch_size=[t.batch_size])
    _best, record = search(source, train, val, _config(labels, {}, epochs=epochs, seed=seed), hpo)
    return {"rows": len(train), "validation_n": len(val), "epochs": epochs, "seed": seed, **record}


def _chosen(found: dict[str, Any]) -> dict[str, Any]:
    return {"freeze_layers": found["best_params"]["freeze_layers"], "learning_rate": found["best_params"]["learning_rate"]}


def run_confirm(source: Path, rows: int, epochs: float, seeds: list[int], candidates: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {name: [] for name in [*candidates, "plain_trainer"]}
    for seed in seeds:
        train, val, test, labels = _data(rows, seed)
        texts, truth = test["text"].tolist(), test["label"].tolist()
        for name, params in candidates.items():
            fitted = fit(source, train, val, _config(labels, params, epochs=epochs, seed=seed))
            report = report_from_logits(predict_torch(fitted.model, fitted.tokenizer, texts, max_length=MAX_LENGTH),
                                        truth, labels)
            out[name].append({"seed": seed, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                              "seconds": fitted.train_seconds, "device": fitted.device})
        t = TrainingSection()
        model, tok, seconds = baseline(source, train, labels, epochs=epochs, lr=t.learning_rate, batch=t.batch_size, seed=seed)
        report = report_from_logits(predict_torch(model, tok, texts, max_length=128), truth, labels)
        out["plain_trainer"].append({"seed": seed, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                                     "seconds": seconds})
    return {"rows": rows, "epochs": epochs, "seeds": seeds, "test_n": len(texts), "candidates": candidates, "runs": out}


def run_speed(source: Path, rows: int, threads: int, candidates: dict[str, dict[str, Any]], repeats: int) -> dict[str, Any]:
    """Examples/s of one epoch on ``rows`` rows, on the CPU, rounds interleaved; medians of ``repeats``."""
    import torch

    if torch.cuda.is_available():
        raise SystemExit("the speed step measures the CPU: run it with CUDA_VISIBLE_DEVICES= set empty")
    torch.set_num_threads(threads)
    train, val, _test, labels = _data(rows, 42)
    val = val.head(64)  # the one evaluation per epoch stays small beside the epoch timed
    speed: dict[str, list[float]] = {name: [] for name in [*candidates, "plain_trainer"]}
    t = TrainingSection()
    for _ in range(repeats):
        for name, params in candidates.items():
            fitted = fit(source, train, val, _config(labels, params, epochs=1.0, seed=42, threads=threads))
            speed[name].append(len(train) / fitted.train_seconds)
        _m, _t, seconds = baseline(source, train, labels, epochs=1.0, lr=t.learning_rate, batch=t.batch_size, seed=42)
        speed["plain_trainer"].append(len(train) / seconds)
    return {"rows": len(train), "threads": threads, "repeats": repeats, "examples_per_s": speed,
            "median": {name: statistics.median(v) for name, v in speed.items()}}


def render(found: dict[str, Any] | None, confirm: dict[str, Any] | None, speed: dict[str, Any] | None) -> str:
    lines: list[str] = []
    if found:
        lines += [f"search: grid over freeze_layers × learning_rate, {found['rows']} rows, {found['epochs']:g} epochs, "
                  f"validation n={found['validation_n']}, {found['seconds']:.0f} s", "",
                  "| trial | freeze_layers | learning_rate | validation macro-F1 | seconds |", "|---:|---:|---:|---:|---:|"]
        for t in sorted(found["trials"], key=lambda t: (t["params"]["freeze_layers"], t["params"]["learning_rate"])):
            lines.append(f"| {t['number']} | {t['params']['freeze_layers']} | {t['params']['learning_rate']:g} | "
                         f"{t.get('value', float('nan')):.4f} | {t['seconds']:.1f} |")
        lines += ["", f"best on validation: {found['best_params']} ({found['best_value']:.4f})", ""]
    if confirm:
        lines += [f"confirm on the frozen test set (n={confirm['test_n']}), seeds {confirm['seeds']}:", "",
                  "| loop | params | test macro-F1 per seed | median | accuracy median |", "|---|---|---|---:|---:|"]
        for name, runs in confirm["runs"].items():
            params = confirm["candidates"].get(name, {"all layers": True, "pad": 128})
            f1 = [r["macro_f1"] for r in runs]
            lines.append(f"| {name} | {params} | {', '.join(f'{x:.3f}' for x in f1)} | {statistics.median(f1):.3f} | "
                         f"{statistics.median(r['accuracy'] for r in runs):.3f} |")
        base = statistics.median(r["macro_f1"] for r in confirm["runs"]["plain_trainer"])
        lines += ["", *(f"- {name}: macro-F1 {100 * (statistics.median(r['macro_f1'] for r in runs) - base):+.1f} pt "
                        f"vs the plain Trainer (target ≥ −0.5)" for name, runs in confirm["runs"].items()
                        if name != "plain_trainer"), ""]
    if speed:
        m = speed["median"]
        lines += [f"speed: one epoch on {speed['rows']} rows, CPU, {speed['threads']} threads, median of "
                  f"{speed['repeats']}:", "", "| loop | examples/s | vs plain Trainer |", "|---|---:|---:|"]
        lines += [f"| {name} | {v:.1f} | {v / m['plain_trainer']:.2f}× |" for name, v in m.items()]
    return "\n".join(lines)


def _step(name: str, steps: set[str], run: Any) -> dict[str, Any] | None:
    """Run a step and save it, or read the last saved one (None when there is none)."""
    if name in steps:
        result = run()
        save(f"defaults-{name}", result)
        return result
    try:
        return latest(f"defaults-{name}")
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench defaults", description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="search,confirm,speed", help="which of search, confirm, speed to run")
    p.add_argument("--source", type=Path, default=None, help="the base model folder (default: the embedded one)")
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--epochs", type=float, default=TrainingSection().epochs)
    p.add_argument("--seeds", default="42,7,1234")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the speed step")
    p.add_argument("--speed-rows", type=int, default=600)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    steps = set(args.steps.split(","))
    source = _source(args.source)
    started = time.perf_counter()
    found = _step("search", steps, lambda: run_search(source, args.rows, args.epochs, 42))
    candidates = {"current": current_defaults()}
    if found:
        candidates["searched"] = _chosen(found)
    seeds = [int(s) for s in args.seeds.split(",")]
    confirm = _step("confirm", steps, lambda: run_confirm(source, args.rows, args.epochs, seeds, candidates))
    speed = _step("speed", steps, lambda: run_speed(source, args.speed_rows, args.threads, candidates, args.repeats))
    print(render(found, confirm, speed))
    print(f"\n({time.perf_counter() - started:.0f} s)")
    save("defaults", {"search": found, "confirm": confirm, "speed": speed})
    return 0


def ratios(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    if r.get("confirm"):
        runs = r["confirm"]["runs"]
        base = statistics.median(x["macro_f1"] for x in runs["plain_trainer"])
        rows += [(f"test macro-F1 {name} defaults − plain Trainer (median of {len(runs[name])} seeds)",
                  f"{100 * (statistics.median(x['macro_f1'] for x in runs[name]) - base):+.1f} pt", "≥ −0.5 pt")
                 for name in runs if name != "plain_trainer"]
    if r.get("speed"):
        m = r["speed"]["median"]
        rows += [(f"examples/s {name} defaults / plain Trainer (CPU, {r['speed']['threads']} threads)",
                  f"{m[name] / m['plain_trainer']:.2f}×", "≥ 3×") for name in m if name != "plain_trainer"]
    return rows
