"""HTML pages for attribution to autoencoder latents: the top latents of each prediction (with
their labels, thumbnails and reference images), deletion curves, and flagged reliance."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hookedclip.methods.sae import Attribution, Faithfulness, RelianceReport
from hookedclip.report import viz


def top_latents_table(
    attribution: Attribution, n: int = 5, references: Sequence[Sequence[int]] | None = None
) -> tuple[list[str], list[list[str]]]:
    """The top-``n`` latents of every (image, output) as a header and string rows."""
    header = ["image", "text", "y", "rank", "latent", "label", "activation", "R", "reference images"]
    rows = []
    for row in attribution.top(n):
        refs = " ".join(map(str, references[row["latent"]][:8])) if references is not None else ""
        rows.append(
            [
                str(row["image"]),
                row["text"],
                f"{row['y']:.3f}",
                str(row["rank"]),
                str(row["latent"]),
                row["label"],
                f"{row['activation']:.3g}",
                f"{row['R']:+.4f}",
                refs,
            ]
        )
    return header, rows


def write_attribution_page(
    attribution: Attribution,
    out_dir: str | Path,
    images: np.ndarray | None = None,
    references: Sequence[Sequence[int]] | None = None,
    n: int = 5,
    max_images: int = 16,
) -> Path:
    """``out_dir/index.html``: per image, its thumbnail (``images`` uint8 ``[N, H, W, 3]``), and
    per output its ``n`` most positive latents (label, activation, R, reference images), with a
    bar chart of the largest attributions of its first output; plus ``top.csv``."""
    from hookedclip.plotting import image_grid

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    shown = range(min(attribution.n_images, max_images))
    for b in shown:
        section = viz.Section(f"Image {b}")
        if images is not None:
            image_grid(images[b : b + 1], [f"image {b}"], out_dir / f"image_{b}.png", cols=1)
            section.figures.append((f"image_{b}.png", f"image {b}"))
        attribution.plot(out_dir / f"bars_{b}.png", image=b, text=0)
        section.figures.append((f"bars_{b}.png", f"the largest attributions to {attribution.texts[0]!r}"))
        header, rows = top_latents_table(attribution, n, references)
        section.tables.append((header, [r for r in rows if r[0] == str(b)]))
        sections.append(section)
    attribution.to_csv(out_dir / "top.csv")
    intro = viz.Section(
        "How to read this page",
        text=[
            "R is activation × gradient of the output: minus R estimates what zeroing the latent does to the output "
            f"({attribution.output}). Latents and the error node sum to about 0 (the final LayerNorm removes the mean "
            "and scale of the residual), so R is a direction, not a share of the output.",
        ],
    )
    meta = f"model: {attribution.model}; splice {attribution.splice}; {attribution.method}"
    return viz.write_report(out_dir, "Attribution to autoencoder latents", [intro, *sections], meta=meta)


def faithfulness_section(curves: Faithfulness, out_dir: str | Path, name: str = "faithfulness") -> viz.Section:
    """A section with the curves' figure (written to ``out_dir/{name}.png``) and the AUC table."""
    curves.plot(Path(out_dir) / f"{name}.png")
    rows = [[m, f"{mean:.4g}", f"{err:.2g}"] for m, (mean, err) in curves.auc().items()]
    return viz.Section(
        f"{curves.mode.capitalize()} curves",
        text=[f"{curves.ablation} ablation, {curves.splice} splice, output {curves.output}; lower AUC is better"],
        figures=[(f"{name}.png", "mean over images, ± one standard error")],
        tables=[(["method", "AUC", "standard error"], rows)],
    )


def reliance_section(report: RelianceReport) -> viz.Section:
    header = ["class", "latent", "label", "share", "alignment", "z", "category", "images"]
    rows = [
        [
            str(p["class"]),
            str(p["latent"]),
            p["label"],
            f"{p['share']:.3f}",
            f"{p['alignment']:.3f}",
            f"{p['z']:.2f}",
            p["category"],
            " ".join(map(str, p["images"])),
        ]
        for p in report.pairs
    ]
    settings = ", ".join(f"{k} = {v}" for k, v in report.settings.items())
    return viz.Section("Unexpected reliance", text=[f"thresholds: {settings}"], tables=[(header, rows)])


__all__ = ["faithfulness_section", "reliance_section", "top_latents_table", "write_attribution_page"]
