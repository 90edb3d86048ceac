"""``python -m refitd.serving.trial_load DIR``: can the serving runtime load and answer with this artifact?

Run by the refit flow in a separate process, so a candidate is tried exactly as
the server would load it (onnxruntime + tokenizers, no torch), at every precision
its meta offers. Prints one JSON line: {"ok": bool, "reason": str, "files": {precision:
{"load_s", "labels", "embedding_dim"}}}; exit code 0 / 1.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from refitd.core.artifacts import ArtifactMeta
from refitd.core.errors import RefitdError
from refitd.serving.runtime import SMOKE_TEXTS, OnnxClassifier


def trial(folder: Path) -> dict:
    out: dict = {"ok": True, "reason": "loaded and answered", "files": {}}
    try:
        meta = ArtifactMeta.read(folder, version="candidate")
    except RefitdError as exc:
        return {"ok": False, "reason": str(exc), "files": {}}
    for precision in ("fp32", "int8") if meta.int8_file else ("fp32",):
        start = time.perf_counter()
        runtime = OnnxClassifier("candidate", folder, provider="cpu", threads=1, precision=precision)
        try:
            runtime.load()
            answer = runtime.predict(SMOKE_TEXTS)
        except RefitdError as exc:
            return {"ok": False, "reason": f"{precision}: {exc}", "files": out["files"]}
        out["files"][precision] = {"load_s": round(time.perf_counter() - start, 3), "labels": answer.labels,
                                   "embedding_dim": int(answer.embeddings.shape[1])}
        runtime.unload()
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m refitd.serving.trial_load ARTIFACT_DIR", file=sys.stderr)
        return 2
    result = trial(Path(argv[0]))
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
