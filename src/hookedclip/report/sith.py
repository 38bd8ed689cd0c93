"""The SITH HTML report (written by ``hookedclip sith report``, :mod:`hookedclip.cli.sith`).

:func:`write_sith_report` writes a folder: an overview page (the mean fidelity of every head,
one row per head with its strongest vector's concepts) and one page per head with the
singular-value bars of its vectors, each labelled with its concepts, and a table of every
vector: ``σ``, the concepts and coefficients of each side explained, and the fidelity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hookedclip.identity import model_label
from hookedclip.methods.sith import SithResult
from hookedclip.report import viz


def _concepts(result: SithResult, h: int, i: int, side: str) -> str:
    return "; ".join(f"{c} ({w:.2f})" for c, w in result.explanation(h, i, side)) or "(none)"


def head_page(result: SithResult, h: int, out_dir: Path, n_bars: int = 12, nav: str = "") -> Path:
    """One head's page: singular-value bars labelled with each vector's concepts (one figure
    per side) and a table of every vector."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label = result.labels[h]
    figures = []
    for side in result.sides:
        name = f"{side}.png"
        result.plot(out_dir / name, head=h, n=n_bars, side=side)
        what = "write directions v_i" if side == "right" else "read directions u_i"
        figures.append(
            (
                name,
                f"{label}: singular values σ_i of its first {min(n_bars, result.rank)} vectors; each bar is labelled "
                f"with the concepts explaining its {side} vector ({what}), coefficients in brackets.",
            )
        )
    header = ["vector", "σ"]
    for side in result.sides:
        header += [f"{side}: concepts (coefficient)", f"{side}: fidelity"]
    rows = []
    for i in range(result.rank):
        row = [f"v{i}", f"{float(result.S[h, i]):.3f}"]
        for s, side in enumerate(result.sides):
            row += [_concepts(result, h, i, side), f"{float(result.fidelity[s, h, i]):.2f}"]
        rows.append(row)
    energy = result.S[h].double() ** 2
    top = float(energy[: min(3, result.rank)].sum() / energy.sum().clamp_min(1e-300))
    text = [
        f"{result.rank} singular vectors; the first three hold {100 * top:.0f}% of Σσ². Concepts were chosen by "
        f"{result.method} (λ = {result.lam:g}, k = {result.k}) in selection order; a chosen concept whose "
        "coefficient is zero is not shown. Fidelity: the cosine of the concepts' reconstruction with the "
        "vector's image in the joint space.",
    ]
    section = viz.Section(label, text, figures, [(header, rows)])
    return viz.write_report(out_dir, f"SITH: {label}", [section], nav=nav)


def write_sith_report(results: SithResult | Sequence[SithResult], out: str | Path, n_bars: int = 12) -> Path:
    """The report folder: ``index.html`` (overview) and ``<head>/index.html`` per head of every
    result (one result per layer), each linked to the overview and to its neighbours."""
    results = [results] if isinstance(results, SithResult) else list(results)
    if not results:
        raise ValueError("no SithResult to report")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heads = [(r, h) for r in results for h in range(r.n_heads)]
    labels = [r.labels[h] for r, h in heads]
    for i, (r, h) in enumerate(heads):
        head_page(r, h, out / labels[i], n_bars, viz.head_nav(labels, i))
    figures = []
    for r in results:
        name = f"fidelity_L{r.layer}.png"
        r.plot(out / name)
        figures.append((name, f"Layer {r.layer}: mean fidelity of each head's explanations, per side."))
    sides = results[0].sides
    header = ["head", "σ_0"] + [f"mean fidelity ({s})" for s in sides] + [f"v0 concepts ({sides[0]})"]
    rows = []
    for r, h in heads:
        row = [r.labels[h], f"{float(r.S[h, 0]):.3f}"]
        row += [f"{float(r.fidelity[s, h].mean()):.2f}" for s in range(len(r.sides))]
        rows.append(row + [_concepts(r, h, 0, r.sides[0])])
    first = results[0]
    overview = viz.Section(
        "Heads",
        [
            f"{len(heads)} heads over {len(results)} layer(s); every singular vector of each head's value-output "
            f"circuit explained by {first.k} concepts of a dictionary of {len(first.concepts)} ({first.method}, "
            f"λ = {first.lam:g}). Click a head for its vectors."
        ],
        figures,
        [(header, rows)],
    )
    path = viz.write_report(out, "SITH report", [overview], meta=model_label(first.model))
    return viz.link_head_pages(path, labels)


__all__ = ["head_page", "write_sith_report"]
