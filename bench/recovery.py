"""``python -m refitd.bench recovery``: how far a refit recovers from a topic shift, per number of labels,
against an oracle. The learning curve users choose ``refit.min_new_labels`` from.

v1 is trained as ``refitd init`` trains it (airline tweets), with the default demo's training-row cap. The shift is the demo's: production becomes
70% other topics (``SHIFT_TOPICS``) and 30% airline, drawn from the corpus's stream split, which no model
trains or tests on. A held-out slice of that mix is set aside first; every figure below is measured on it.

For each label count, a copy of v1's home receives that many labelled rows of the new mix as feedback,
and ``python -m refitd.flows refit`` runs exactly as the daemon starts it (same flow, settings, replay,
caps and gate). The oracle is the same refit given every labelled row of the new mix outside the held-out
slice, with no training-row cap, and not promoted: what the labels the daemon could ever have would buy.

Per run: the candidate's and the then-served model's accuracy and macro-F1 on the held-out slice, the
candidate's macro-F1 on the frozen (airline) test set (forgetting), the gate's verdict and the wall time of
each stage; the share of the oracle's gain over v1 each label count reaches; a PNG of the curve.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from refitd.bench.report import RESULTS, save
from refitd.core import children
from refitd.core.artifacts import ArtifactMeta, ArtifactStore
from refitd.core.datasets import load_configured
from refitd.core.db import make_engine, session_scope
from refitd.core.settings import Settings
from refitd.core.tables import Feedback, utcnow
from refitd.core.topics import SHIFT_TOPICS
from refitd.flows.evaluate import onnx_logits, report_from_logits

DEMO_LABELS = 1400  # the default demo's refit.min_new_labels: the target is read at this count
# What a copy of v1's home needs (SQLite's WAL too); each run starts its own Prefect.
HOME_FILES = ("refitd.toml", "refitd.db", "refitd.db-wal", "refitd.db-shm", "models", "data")


def new_mix(other_share: float, seed: int) -> pd.DataFrame:
    """The shifted production traffic: the stream split's other-topic tweets and airline tweets, mixed."""
    corpus = load_configured(data=None, text_column="text", label_column="label", topics=[],
                             validation_fraction=0.1, test_fraction=0.15)
    stream = corpus[corpus["split"] == "stream"].sample(frac=1.0, random_state=seed)
    other = stream[stream["topic"].isin(SHIFT_TOPICS)]
    airline = stream[stream["topic"] == "airline"]
    n_airline = min(len(airline), int(len(other) * (1 - other_share) / other_share))
    return pd.concat([other, airline.iloc[:n_airline]]).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _write_config(home: Path, *, quick: bool, max_train_rows: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "refitd.toml").write_text(f"# written by `python -m refitd.bench recovery`\n[refit]\nquick = {str(quick).lower()}\n"
                                      f"[training]\nmax_train_rows = {max_train_rows}\n")


def _flow(home: Path, args: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    code, result = children.run(Settings.load(home=home), args, log_file=home / "flows.log")
    if code != 0 or "error" in result:
        raise RuntimeError(f"{' '.join(args)} in {home} failed ({result.get('error')}); see {home / 'flows.log'}")
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _copy_home(v1: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for name in HOME_FILES:
        source = v1 / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        elif source.is_file():
            shutil.copy2(source, target / name)


def _add_feedback(home: Path, rows: pd.DataFrame) -> None:
    now = utcnow()  # after v1's promotion: new labels to the refit
    with session_scope(make_engine(Settings.load(home=home).database_url)) as s:
        for i, (text, label) in enumerate(zip(rows["text"], rows["label"], strict=True)):
            s.add(Feedback(text=text, label=label, source="bench", created_at=now + timedelta(milliseconds=i)))


def score(home: Path, version: str, holdout: pd.DataFrame) -> dict[str, Any]:
    """The version as served (its serve file) on the held-out slice."""
    folder = ArtifactStore.from_settings(Settings.load(home=home)).verify(version)
    meta = ArtifactMeta.read(folder)
    logits = onnx_logits(folder / meta.serve_file, folder / meta.tokenizer_file, holdout["text"].tolist(),
                         max_length=meta.max_length)
    report = report_from_logits(logits, holdout["label"].tolist(), list(meta.labels))
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "n": report["n"],
            "serve_file": meta.serve_file}


def refit_with(v1_home: Path, home: Path, labels: pd.DataFrame, holdout: pd.DataFrame, *, quick: bool,
               oracle: bool = False) -> dict[str, Any]:
    _copy_home(v1_home, home)
    if oracle:  # every label, no cap on training rows, and never promoted
        _write_config(home, quick=quick, max_train_rows=1_000_000)
    _add_feedback(home, labels)
    args = ["refit", "--trigger", "bench"] + (["--quick"] if quick else []) + (["--no-promote"] if oracle else [])
    result = _flow(home, args)
    m = result["metrics"]
    served = result["version"] if result["promoted"] else result["parent"]
    return {"labels": len(labels), "version": result["version"], "verdict": result["verdict"],
            "reason": result["reason"], "candidate": score(home, result["version"], holdout),
            "served": score(home, served, holdout), "served_version": served,
            "frozen_macro_f1": m["candidate"]["frozen"]["macro_f1"],
            "champion_frozen_macro_f1": (m.get("champion") or {}).get("frozen", {}).get("macro_f1"),
            "train_rows": _train_rows(home, result["version"]),
            "timings": result.get("timings"), "wall_s": result["wall_s"]}


def _train_rows(home: Path, version: str) -> int | None:
    from refitd.core import registry

    with session_scope(make_engine(Settings.load(home=home).database_url)) as s:
        counts = registry.get_version(s, version=version).data_counts or {}
    return (counts.get("train") or {}).get("rows")


def gain_share(value: float, v1: float, oracle: float) -> float | None:
    """How much of the oracle's gain over v1 ``value`` reaches (1 = all of it)."""
    return None if oracle - v1 <= 1e-9 else (value - v1) / (oracle - v1)


def plot(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    xs = [r["labels"] for r in runs]
    ax.plot(xs, [r["candidate"]["accuracy"] for r in runs], "o-", label="refit candidate: accuracy")
    ax.plot(xs, [r["candidate"]["macro_f1"] for r in runs], "s--", label="refit candidate: macro-F1")
    ax.plot(xs, [r["served"]["accuracy"] for r in runs], "x:", label="served after the gate: accuracy")
    ax.axhline(result["oracle"]["candidate"]["accuracy"], color="tab:green", label=f"oracle ({result['oracle']['labels']} labels): accuracy")
    ax.axhline(result["v1"]["accuracy"], color="tab:red", label="v1 (before the shift's labels): accuracy")
    ax.axvline(DEMO_LABELS, color="grey", linestyle=":", label=f"the demo's refit.min_new_labels ({DEMO_LABELS})")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("labels of the new traffic mix given to the refit")
    ax.set_ylabel("on held-out new-mix traffic")
    ax.set_ylim(0, 1)
    ax.set_title("refitd recovery: a refit's gain per labels, against an oracle")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m refitd.bench recovery", description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", default="200,400,800,1400,3000", help="label counts, comma separated")
    p.add_argument("--holdout", type=int, default=1000, help="rows of the new mix held out for scoring")
    p.add_argument("--oracle-labels", type=int, default=None, help="cap on the oracle's labels (default: all)")
    p.add_argument("--other-share", type=float, default=0.7, help="other-topic share of the new mix")
    p.add_argument("--max-train-rows", type=int, default=2000,
                   help="training.max_train_rows for v1 and the refits (default: the default demo's)")
    p.add_argument("--quick", action="store_true", help="the quick profile for v1 and every refit (a smoke run)")
    p.add_argument("--work", type=Path, default=None, help="folder for the homes (default: a temporary one, removed)")
    p.add_argument("--png", type=Path, default=None, help="the curve's PNG (default: beside the results)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    counts = sorted({int(x) for x in args.labels.split(",")})
    mix = new_mix(args.other_share, args.seed)
    holdout, pool = mix.iloc[: args.holdout], mix.iloc[args.holdout:]
    if counts[-1] > len(pool):
        p.error(f"--labels up to {counts[-1]} but the new mix has {len(pool)} rows outside the held-out slice")
    work = args.work or Path(tempfile.mkdtemp(prefix="refitd-bench-recovery-"))
    started = time.perf_counter()
    try:
        v1_home = work / "v1"
        _write_config(v1_home, quick=args.quick, max_train_rows=args.max_train_rows)
        print(f"v1: refitd init in {v1_home} …", file=sys.stderr, flush=True)
        init = _flow(v1_home, ["init"] + (["--quick"] if args.quick else []))
        v1 = score(v1_home, init["version"], holdout)
        oracle_rows = pool if args.oracle_labels is None else pool.iloc[: args.oracle_labels]
        print(f"oracle with {len(oracle_rows)} labels …", file=sys.stderr, flush=True)
        oracle = refit_with(v1_home, work / "oracle", oracle_rows, holdout, quick=args.quick, oracle=True)
        print(f"  oracle: accuracy {oracle['candidate']['accuracy']:.3f}, macro-F1 {oracle['candidate']['macro_f1']:.3f} "
              f"(v1 {v1['accuracy']:.3f} / {v1['macro_f1']:.3f})", file=sys.stderr, flush=True)
        runs = []
        for n in counts:
            print(f"refit with {n} labels …", file=sys.stderr, flush=True)
            runs.append(refit_with(v1_home, work / f"labels-{n}", pool.iloc[:n], holdout, quick=args.quick))
            r = runs[-1]  # each point as it lands: a long study interrupted still shows what it measured
            print(f"  {n} labels: {r['verdict']}; candidate accuracy {r['candidate']['accuracy']:.3f}, macro-F1 "
                  f"{r['candidate']['macro_f1']:.3f} (v1 {v1['accuracy']:.3f} / {v1['macro_f1']:.3f}); frozen macro-F1 "
                  f"{r['frozen_macro_f1']:.3f}; stages {r['timings']}", file=sys.stderr, flush=True)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for r in runs:
        r["gain_share"] = {k: gain_share(r["candidate"][k], v1[k], oracle["candidate"][k])
                           for k in ("accuracy", "macro_f1")}
    result = {"v1": v1, "v1_init_wall_s": init["wall_s"], "runs": runs, "oracle": oracle, "holdout": len(holdout),
              "max_train_rows": args.max_train_rows,
              "other_share": args.other_share, "quick": args.quick, "wall_s": round(time.perf_counter() - started, 1)}
    png = args.png or RESULTS / "recovery.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    result["png"] = str(plot(result, png))
    save("recovery", result)
    print(report(result))
    return 0


def report(result: dict[str, Any]) -> str:
    v1, oracle = result["v1"], result["oracle"]["candidate"]
    lines = [f"held-out new-mix traffic: {result['holdout']} rows ({result['other_share']:.0%} other topics); "
             f"v1 accuracy {v1['accuracy']:.3f} / macro-F1 {v1['macro_f1']:.3f}; oracle ({result['oracle']['labels']} "
             f"labels, {result['oracle']['train_rows']} training rows) {oracle['accuracy']:.3f} / {oracle['macro_f1']:.3f}",
             "", "| labels | train rows | gate | candidate acc | candidate F1 | share of oracle gain (acc / F1) | "
             "served acc | frozen F1 (v1) | train s | export s | evaluate s | wall s |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        t, g = r["timings"] or {}, r["gain_share"]
        share = " / ".join("—" if g[k] is None else f"{g[k]:.0%}" for k in ("accuracy", "macro_f1"))
        lines.append(f"| {r['labels']} | {r['train_rows']} | {r['verdict']} | {r['candidate']['accuracy']:.3f} | "
                     f"{r['candidate']['macro_f1']:.3f} | {share} | {r['served']['accuracy']:.3f} | "
                     f"{r['frozen_macro_f1']:.3f} ({r['champion_frozen_macro_f1']:.3f}) | {t.get('train', 0):.0f} | "
                     f"{t.get('export', 0):.0f} | {t.get('evaluate', 0):.0f} | {r['wall_s']:.0f} |")
    lines.append(f"\npng: {result['png']}; wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)


def ratios(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """For `python -m refitd.bench`'s table: the share of the oracle's gain at the demo's label count."""
    at = min(result["runs"], key=lambda r: abs(r["labels"] - DEMO_LABELS))
    share = at["gain_share"]["accuracy"]
    return [(f"refit at {at['labels']} labels / oracle, share of gain over v1 (accuracy)",
             "—" if share is None else f"{share:.0%}", "≥ 90%")]


if __name__ == "__main__":
    sys.exit(main())
