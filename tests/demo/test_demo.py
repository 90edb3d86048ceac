"""`refitd demo --quick` end to end through the real CLI: drift only after the shift, a refit, a promotion, recovery.

Fixed seeds (stream order, label sampling, training), but real timing on a shared machine, so
the assertions are about the loop's outcome, with these tolerances: phase 1 has no drifted
check; phase 2 has at least one; the refit completed and promoted; the new champion's live
accuracy on phase-2 traffic is above the old one's on the same phase (the quick demo measured
0.60–0.65 vs 0.50 with 120–150 and about 2,400 labelled answers; the test asks only for "higher");
one of the new champion's first three drift checks is not drifted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _green_pixels(path: Path) -> int:
    """Pixels of matplotlib's tab:green (#2ca02c), the promotion line's colour."""
    import matplotlib.image

    image = matplotlib.image.imread(str(path))[..., :3]
    return int((np.abs(image - np.array([0x2C, 0xA0, 0x2C]) / 255).max(axis=-1) < 0.05).sum())


@pytest.mark.timeout(1400)  # past the demo's own 1,200 s limit below, which stops it cleanly
def test_quick_demo_recovers_after_drift(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFITD_")}
    process = subprocess.Popen([sys.executable, "-m", "refitd.cli", "demo", "--quick", "--home", str(home)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # as a user's Ctrl-C: the demo stops its daemon on the way out
        out, err = process.communicate(timeout=120)
        pytest.fail(f"the quick demo ran past 1,200 s\n{out[-4000:]}{err[-4000:]}")
    assert process.returncode == 0, out[-4000:] + err[-4000:]
    summary = json.loads((home / "demo" / "summary.json").read_text())

    assert summary["drift"]["1"], "phase 1 had no check with enough data"
    assert all(c["verdict"] == "not_drifted" for c in summary["drift"]["1"]), summary["drift"]["1"]
    assert any(c["verdict"] == "drifted" for c in summary["drift"]["2"])

    refit = summary["refit"]
    assert refit is not None and refit["trigger"] == "drift" and refit["status"] == "completed", refit
    assert refit["verdict"] == "promoted", refit["reason"]
    new = refit["version"]
    groups = {(g["phase"], g["version"]): g for g in summary["groups"]}
    before, after = groups[(2, "v1")], groups[(2, new)]
    assert after["requests"] >= 100 and after["labelled"] >= 40  # the demo stops at a time cap if the refit ran long
    assert after["accuracy"] > before["accuracy"], (before, after)
    assert summary["errors"] == 0

    assert len(summary["plots"]) == 2
    for png in map(Path, summary["plots"]):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert summary["promotions"] and summary["promotions"][0][1] == new
    # The reference follows the adaptation: the new champion's checks (against its reference, built from the
    # production traffic it was trained on) settle to "not drifted" within three while the mix stays the same.
    settled = summary["after_promotion"]
    assert "not_drifted" in settled[:3], (settled, [c["reason"] for c in summary["checks"] if c["champion"] == new])
    assert _green_pixels(home / "demo" / "live_accuracy.png") > 200  # the promotion line is drawn
    assert all(Path(r).is_file() for r in summary["reports"])
    assert "refit (drift) started" in out and "summary" in out


def test_the_demo_names_only_topics_the_corpus_has() -> None:
    from refitd.core.topics import TOPICS
    from refitd.demo.run import OTHER_TOPICS

    assert set(OTHER_TOPICS) <= set(TOPICS)
