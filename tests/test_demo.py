"""`hookedclip demo` writes a complete report, and the CLI's other entry points work."""

from __future__ import annotations

import re

import matplotlib.image as mpimg

from hookedclip.cli import main
from hookedclip.report.demo import SECTIONS


def test_demo_writes_report_with_all_figures(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--n", "96"]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    html = (out / "index.html").read_text()
    figures = re.findall(r"<img src='([^']+)'", html)
    assert {
        "samples.png",
        "zero_shot.png",
        "layer_shares.png",
        "head_probes.png",
        "ablation_curve.png",
        "pclens_strengths.png",
        "pclens_pc.png",
        "pclens_debias.png",
        "segmentation_overlays.png",
        "sae_deletion.png",
    } <= set(figures)
    # Every figure written is shown, and none is blank.
    assert sorted(figures) == sorted(p.name for p in out.glob("*.png"))
    for name in figures:
        pixels = mpimg.imread(out / name)[..., :3]
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100, (name, pixels.shape)
        assert pixels.std() > 0.02, f"{name} is (nearly) blank: pixel std {pixels.std():.4f}"
    # One heading per section, in order.
    headings = re.findall(r"<h2 id='s\d+'>([^<]+)</h2>", html)
    assert headings == [
        "The toy world",
        "Zero-shot accuracy",
        "Where the image embedding comes from",
        "Which heads carry which attribute",
        "Which layers matter: accumulated mean-ablation",
        "TextSpan: texts that span each head",
        "PCLens: principal components of each head, labelled with text",
        "Zero-shot segmentation",
        "Attribution to autoencoder latents",
    ]
    assert len(headings) == len(SECTIONS)
    for phrase in ("worst group", "centred blob", "majority-class", "embedding slot"):
        assert phrase in html


def test_info_lists_hook_patterns(capsys):
    assert main(["info", "toy"]) == 0
    text = capsys.readouterr().out
    assert "visual.blocks.{l}.attn.hook_z" in text and "text: 2 layers" in text


def test_cli_reports_bad_model_cleanly(capsys):
    assert main(["info", "ViT-B-99"]) == 2
    assert "closest: ViT-B-32" in capsys.readouterr().err
