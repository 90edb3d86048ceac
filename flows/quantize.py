"""INT8 variants of an exported graph: build each recipe, score it on validation rows, time it against fp32.

Which variant is kept is the gate's rule (:func:`refitd.flows.gate.choose_int8`: the fastest whose
validation accuracy stays within ``gate.int8_tolerance`` of fp32); this module only builds and
measures. Every variant is timed in the same process, with the same threads and session options as
the server, round-robin with fp32, and its speed is read as the median of per-round ratios to fp32,
so a busy machine slows every graph of a round alike instead of deciding the choice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                      quantize_static)

from refitd.core.encoding import encode, load_tokenizer
from refitd.core.service_sections import ort_spin_entries
from refitd.flows.evaluate import scoring_batch, scoring_threads

log = logging.getLogger(__name__)

BATCH = 32  # the batched timing's size: the server's default serving.max_batch_size
SINGLE_TEXTS, BATCH_TEXTS = 32, 2 * BATCH  # texts timed one by one, and in batches, per round
_TIMING_FIELDS = ("single_p50_ms", "batch32_texts_per_s", "speedup_single", "speedup_batch32", "speedup")


@dataclass(frozen=True)
class Recipe:
    """One way to make an INT8 graph. ``keep_fp32``: node-name fragments whose weights stay fp32."""

    name: str
    static: bool  # activations quantized with ranges calibrated on training rows (QDQ), not per batch at run time
    per_channel: bool  # one weight scale per output channel, not one per tensor
    keep_fp32: tuple[str, ...] = ()
    about: str = ""


FIRST_LAYER = ("/layer.0/",)  # BERT / RoBERTa / DistilBERT name their first encoder block so
RECIPES = {r.name: r for r in (
    Recipe("dynamic", False, False, about="dynamic: per-tensor weights (also the embedding table), "
                                          "activations quantized per batch"),
    Recipe("dynamic_per_channel", False, True, about="dynamic: per-channel weights"),
    Recipe("static", True, True, about="static QDQ: per-channel weights, activation ranges calibrated on "
                                       "training rows; embeddings and head fp32"),
    Recipe("static_keep_first", True, True, keep_fp32=FIRST_LAYER,
           about="static QDQ, and the first encoder layer fp32"),
)}


@contextmanager
def _quiet() -> Iterator[None]:
    """The quantizer logs every tensor at INFO on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def feeds(tokenizer_json: Path, texts: list[str], *, max_length: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    """``texts`` encoded as the server encodes them, in batches of similar length."""
    tok = load_tokenizer(tokenizer_json, max_length=max_length)
    order = np.argsort([len(t) for t in texts], kind="stable")
    return [encode(tok, [texts[i] for i in order[j : j + batch_size]]) for j in range(0, len(texts), batch_size)]


def weight_matmuls(graph: onnx.ModelProto, keep_fp32: tuple[str, ...] = ()) -> list[str]:
    """MatMul nodes with a constant weight (not attention's activation × activation), minus ``keep_fp32``."""
    weights = {t.name for t in graph.graph.initializer}
    return [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in weights
            and not any(part in n.name for part in keep_fp32)]


def build(recipe: Recipe, fp32_path: Path, out: Path, calibration: list[dict[str, np.ndarray]]) -> Path:
    """Write ``out``: ``fp32_path`` quantized by ``recipe`` (static recipes read ``calibration`` batches)."""
    graph = onnx.load(str(fp32_path), load_external_data=False)
    keep = [n.name for n in graph.graph.node if any(part in n.name for part in recipe.keep_fp32)]
    with _quiet():
        if not recipe.static:
            quantize_dynamic(str(fp32_path), str(out), weight_type=QuantType.QInt8, per_channel=recipe.per_channel,
                             nodes_to_exclude=keep)
        else:
            # U8 activations × S8 weights is the pair x86 VNNI kernels run. Only weight MatMuls are quantized,
            # so LayerNorm, softmax, GELU, attention scores and the Gemm head stay fp32; their outputs stay float
            # (ORT fuses DQ → MatMul into MatMulIntegerToFloat with the bias): quantizing them too made a
            # QLinearMatMul + DQ + Add per MatMul, slower and further from fp32 (agreement 0.92 vs 0.97).
            matmuls = weight_matmuls(graph, recipe.keep_fp32)
            quantize_static(str(fp32_path), str(out), _Feeds(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["MatMul"], nodes_to_quantize=matmuls,
                            per_channel=recipe.per_channel, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]})
            _float_beside_matmuls(out, set(matmuls))
    return out


def _float_beside_matmuls(path: Path, matmuls: set[str]) -> None:
    """Let every consumer of a quantized activation except the quantized MatMuls read the float tensor again.

    The QDQ quantizer hands the dequantized tensor to all consumers, so the residual Adds and
    LayerNorms would carry rounding error down the whole encoder; only the MatMuls need it.
    """
    graph = onnx.load(str(path))
    quantized_from = {n.output[0]: n.input[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"}
    source = {n.output[0]: quantized_from[n.input[0]] for n in graph.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in quantized_from}
    for node in graph.graph.node:
        if node.name not in matmuls:
            for i, name in enumerate(node.input):
                node.input[i] = source.get(name, name)
    onnx.save(graph, str(path))


def session(path: Path, threads: int | None, spin: str = "off") -> ort.InferenceSession:
    """A CPU session set up as the server sets up its own (all graph optimisations, intra-op threads, workers
    that spin as ``serving.spin`` says)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    for key, value in ort_spin_entries(spin).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predictions(sess: ort.InferenceSession, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Predicted class ids, in the order of the batches' rows."""
    return np.concatenate([sess.run(["logits"], b)[0].argmax(axis=1) for b in batches])


def time_graphs(sessions: dict[str, ort.InferenceSession], texts: list[str], tokenizer_json: Path, *,
                max_length: int, rounds: int, baseline: str = "fp32") -> dict[str, dict[str, float]]:
    """Single-text p50 latency and batch-of-32 throughput of each session, and both as ratios to ``baseline``
    (median over rounds of the ratio measured within a round); tokenisation is not timed."""
    tok = load_tokenizer(tokenizer_json, max_length=max_length)
    cycle = [texts[i % len(texts)] for i in range(SINGLE_TEXTS + BATCH_TEXTS)]
    singles = [encode(tok, [t]) for t in cycle[:SINGLE_TEXTS]]
    batches = [encode(tok, cycle[SINGLE_TEXTS + i : SINGLE_TEXTS + i + BATCH]) for i in range(0, BATCH_TEXTS, BATCH)]
    for sess in sessions.values():  # warm-up: first runs allocate and pick kernels
        for feed in singles[:8] + batches[:1]:
            sess.run(None, feed)
    single: dict[str, list[float]] = {name: [] for name in sessions}
    batch: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            lat = []
            for feed in singles:
                start = time.perf_counter()
                sess.run(None, feed)
                lat.append(time.perf_counter() - start)
            single[name].append(float(np.median(lat)) * 1000)
            start = time.perf_counter()
            for feed in batches:
                sess.run(None, feed)
            batch[name].append(BATCH_TEXTS / (time.perf_counter() - start))
    out = {}
    for name in sessions:
        x1 = float(np.median(np.asarray(single[baseline]) / np.asarray(single[name])))
        x32 = float(np.median(np.asarray(batch[name]) / np.asarray(batch[baseline])))
        out[name] = {"single_p50_ms": float(np.median(single[name])),
                     "batch32_texts_per_s": float(np.median(batch[name])),
                     "speedup_single": x1, "speedup_batch32": x32, "speedup": float(np.sqrt(x1 * x32))}
    return out


# A fallback is built only when every listed recipe it backs up missed the tolerance. Static QDQ costs a
# calibration pass and 3-6× a dynamic build, and in every default demo so far (v1 and v2, three runs) a
# dynamic variant within the tolerance was as fast as static or faster on CPU (v2: 1.46× vs 1.45× fp32);
# static earns its build where both dynamic variants lose accuracy.
FALLBACKS = {"static": ("dynamic", "dynamic_per_channel"), "static_keep_first": ("static",)}
TIER = {"dynamic": 0, "dynamic_per_channel": 0, "static": 1, "static_keep_first": 2}


def measure(fp32_path: Path, tokenizer_json: Path, folder: Path, *, recipes: list[str], calibration_texts: list[str],
            validation_texts: list[str], validation_labels: list[int], max_length: int, threads: int | None,
            tolerance: float | None = None, rounds: int = 3, fp32_logits: np.ndarray | None = None,
            spin: str = "off") -> dict[str, Any]:
    """Build each recipe into ``folder``; return fp32's and each variant's validation accuracy, agreement with
    fp32, timings and size (``path`` names the variant's file).

    With a ``tolerance``, export only needs the speed of variants that could be kept: one whose validation
    accuracy is further than that below fp32's is not timed (its speed fields are None), and a fallback
    recipe (``FALLBACKS``: static behind the dynamic ones, ``static_keep_first`` behind static) is built
    only when every listed recipe it backs up missed.
    ``fp32_logits``: fp32's validation logits (rows in ``validation_texts`` order) when the caller has them
    already; fp32 is then not scored again. ``spin``: ``serving.spin``, so the timings are the server's."""
    scoring = scoring_threads()  # accuracy on the refit's own threads, as onnx_logits scores fp32
    val = feeds(tokenizer_json, validation_texts, max_length=max_length, batch_size=scoring_batch(scoring))
    order = np.argsort([len(t) for t in validation_texts], kind="stable")
    y = np.asarray(validation_labels)[order]  # the rows in the order `feeds` batched them
    calibration = feeds(tokenizer_json, calibration_texts, max_length=max_length, batch_size=16) \
        if any(RECIPES[r].static for r in recipes) else []
    paths, built, preds, skipped = {"fp32": fp32_path}, {}, {}, {}
    preds["fp32"] = predictions(session(fp32_path, scoring), val) if fp32_logits is None \
        else fp32_logits.argmax(axis=1)[order]

    def accuracy(name: str) -> float:
        return float((preds[name] == y).mean()) if len(y) else 0.0

    def missed(name: str) -> bool:
        return tolerance is not None and accuracy("fp32") - accuracy(name) > tolerance + 1e-9

    kept_by: dict[str, str] = {}  # a skipped fallback -> the recipe within tolerance that made it unneeded

    def within(name: str) -> str | None:
        for backed in FALLBACKS.get(name, ()):
            if backed in kept_by:
                return kept_by[backed]
            if backed in preds and not missed(backed):
                return backed
            if backed not in recipes and (enough := within(backed)) is not None:  # what it backs up, unlisted
                return enough
        return None

    for name in sorted(recipes, key=TIER.__getitem__):  # fallbacks after what they back up
        if tolerance is not None and (enough := within(name)) is not None:
            kept_by[name] = enough
            skipped[name] = f"not built: {enough} is within tolerance"
            continue
        start = time.perf_counter()
        paths[name] = build(RECIPES[name], fp32_path, folder / f"model.{name}.onnx", calibration)
        built[name] = round(time.perf_counter() - start, 1)
        preds[name] = predictions(session(paths[name], scoring), val)
    # timed as the server runs them: its threads and spin setting
    timed = [name for name in paths if name == "fp32" or not missed(name)]
    timing = time_graphs({name: session(paths[name], threads, spin) for name in timed}, validation_texts,
                         tokenizer_json, max_length=max_length, rounds=rounds) \
        if len(timed) > 1 else {"fp32": dict.fromkeys(_TIMING_FIELDS, None) | {"speedup": 1.0}}
    out: dict[str, Any] = {}
    for name, path in paths.items():
        out[name] = {"accuracy": accuracy(name), "agreement": float((preds[name] == preds["fp32"]).mean()) if len(y) else 1.0,
                     **timing.get(name, dict.fromkeys(_TIMING_FIELDS)), "megabytes": round(path.stat().st_size / 1e6, 1),
                     "path": str(path)}
        if name in built:
            out[name] |= {"about": RECIPES[name].about, "build_seconds": built[name]}
    for name, why in skipped.items():
        out[name] = {"about": RECIPES[name].about, "skipped": why}
    return out

