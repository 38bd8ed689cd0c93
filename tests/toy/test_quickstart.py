"""examples/quickstart.py runs, and its point holds: ablating the shape head L3H2 costs shape
accuracy and leaves colour and texture nearly untouched."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hookedclip.toy.evaluate import binomial_se

N = 500
QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def _load_quickstart():
    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_head_ablation_lowers_shape_accuracy(capsys):
    results = _load_quickstart().main(["--layer", "3", "--head", "2", "--n", str(N)])
    assert "zero-ablating head L3H2" in capsys.readouterr().out
    clean, ablated = results["shape"]
    # Same images before and after, so the drop is not sampling noise; ask for 3 standard errors.
    drop = clean - ablated
    assert drop > 3 * binomial_se(clean, N), f"shape {100 * clean:.1f}% -> {100 * ablated:.1f}% on {N} images"
    for attribute in ("color", "texture"):
        before, after = results[attribute]
        assert abs(after - before) < drop / 2, f"{attribute}: {100 * before:.1f}% -> {100 * after:.1f}%"
