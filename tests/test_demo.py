"""`hookedclip demo` writes a complete report, and the CLI's other entry points work."""

from __future__ import annotations

import re

from hookedclip.cli import main


def test_demo_writes_report_with_all_figures(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--n", "96"]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    html = (out / "index.html").read_text()
    figures = re.findall(r"<img src='([^']+)'", html)
    assert {"samples.png", "zero_shot.png", "layer_shares.png", "head_probes.png", "ablation_curve.png",
            "pclens_strengths.png", "pclens_pc.png", "pclens_debias.png", "segmentation_overlays.png"} <= set(figures)
    for name in figures:
        assert (out / name).stat().st_size > 5000, name
    for title in ("The toy world", "Zero-shot accuracy", "Which heads carry which attribute", "TextSpan", "PCLens",
                  "Zero-shot segmentation", "worst group", "centred blob"):
        assert title in html


def test_info_lists_hook_patterns(capsys):
    assert main(["info", "toy"]) == 0
    text = capsys.readouterr().out
    assert "visual.blocks.{l}.attn.hook_z" in text and "text: 2 layers" in text


def test_cli_reports_bad_model_cleanly(capsys):
    assert main(["info", "ViT-B-99"]) == 2
    assert "closest: ViT-B-32" in capsys.readouterr().err
