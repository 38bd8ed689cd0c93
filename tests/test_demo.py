"""`hookedclip demo` writes a complete report, and the CLI's other entry points work."""

from __future__ import annotations

import re

import matplotlib.image as mpimg

from hookedclip.cli import main
from hookedclip.report.demo import SECTIONS


def test_demo_writes_report_with_all_figures(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out), "--n", "96", "--n-test", "200"]) == 0
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
        "sae_labels_gallery.png",
        "sae_labels_scatter.png",
        "sith_head.png",
        "sith_suppression.png",
        "head_shares.png",
        "attention.png",
        "pclens_pc_head.png",
        "llava_shares.png",
        "llava_ablation.png",
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
        headings[7],
        "Sparse autoencoder: latents of the last-layer class token",
        "Sparse-autoencoder latents, labelled",
        "Attribution to autoencoder latents",
        "SITH: what each head writes, read from its weights",
        "LLaVA: the patch tokens a language model reads",
    ]
    verdict = r"((better|worse) than a centred blob( on [a-zA-Z ,]+)?|not distinguishable from a centred blob)"
    assert re.fullmatch(rf"Zero-shot segmentation \(4 x 4 maps; {verdict}\)", headings[7]), headings[7]
    assert len(headings) == len(SECTIONS)
    for phrase in (
        "worst group",
        "centred blob",
        "majority-class",
        "embedding slot",
        "3 texts per head",
        "hooked_vision_tower",
        "identity in value",
    ):
        assert phrase in html
    # One set of numbers: the spurious-split baseline of the zero-shot section is the K = 0 row
    # of the PCLens sweep (the same canonical test images), every accuracy with its interval.
    tables = re.findall(r"<table>(.*?)</table>", html, re.S)
    cells = [re.findall(r"<td[^>]*>([^<]*)</td>", t) for t in tables]
    spurious = next(c for c, t in zip(cells, tables) if "spurious-split group</th>" in t)
    average, worst = spurious[spurious.index("average") + 1], spurious[spurious.index("worst group") + 1]
    assert re.fullmatch(r"\d+\.\d% \[\d+\.\d, \d+\.\d\]", average), average
    sweep = next(c for c, t in zip(cells, tables) if "validation worst group" in t)
    assert sweep[:5] == ["0", "0", sweep[2], average, worst]  # K, PCs removed, validation WGA, test average, test WGA
    assert "K is chosen on the canonical validation set" in html
    controls = "random PCs" in html and "attribute (world test set)" in html
    assert controls or "No K qualified on the validation set" in html
    assert "⚠" in html  # weak PCLens labels are marked
    # The segmentation's differences from the blob carry paired intervals; the probe cells their own.
    blob = next(c for c, t in zip(cells, tables) if "paired bootstrap interval" in t)
    signed = r"[+-]\d+\.\d"
    assert len(blob) == 3 * 4 and all(
        re.fullmatch(rf"{signed} \[{signed}, {signed}\]", c) for i, c in enumerate(blob) if i % 4
    ), blob
    assert "accuracy ± half the width of its 95% Wilson interval" in html


def test_blob_verdict_counts_a_metric_only_where_its_interval_excludes_zero():
    from hookedclip.report.sections.methods import blob_verdict

    clear, noise, below = (0.02, 0.01, 0.03), (0.02, -0.001, 0.04), (-0.02, -0.03, -0.01)
    assert blob_verdict({"pixel_accuracy": clear, "miou": clear, "map": clear}) == "better than a centred blob"
    assert blob_verdict({"pixel_accuracy": noise, "miou": noise, "map": noise}) == (
        "not distinguishable from a centred blob"
    )
    assert blob_verdict({"pixel_accuracy": below, "miou": below, "map": below}) == "worse than a centred blob"
    assert blob_verdict({"pixel_accuracy": clear, "miou": noise, "map": below}) == (
        "better than a centred blob on pixel accuracy, worse on mAP, within noise on mIoU"
    )


def test_info_lists_hook_patterns(capsys):
    assert main(["info", "toy"]) == 0
    text = capsys.readouterr().out
    assert "visual.blocks.{l}.attn.hook_z" in text and "text: 2 layers" in text


def test_cli_reports_bad_model_cleanly(capsys):
    assert main(["info", "ViT-B-99"]) == 2
    assert "closest: ViT-B-32" in capsys.readouterr().err
